"""Identification protocols: which images form the gallery and which are probes.

* ``given``: a gallery folder and a probe folder, as the earlier work's train_knn/test_knn;
* ``split``: one folder split per identity, seeded: ``gallery_per_identity`` random images
  of each identity form the gallery, the rest are probes;
* ``first_file``: the first file (sorted by name) of each identity is the gallery, the
  rest are probes (the FaceNet pilot's protocol; its other variants of that photo leak);
* ``first_source`` (the end-of-training check): the first source photo of each identity
  is the gallery, the others are probes, so no probe shares a source photo with it.

The protocols only assign images. Whether a probe's source photo (``Name_SSSS``) also sits
in the gallery, or its identity is absent from it, is judged by the identification
evaluator, the same way for every protocol.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Sequence

import numpy as np

from bt_jax.data.folder import ImageRecord

PROTOCOLS = ("split", "given", "first_file")


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The gallery and the probes of one protocol, with what it left out and why."""
    protocol: str
    gallery: List[ImageRecord]
    probes: List[ImageRecord]
    notes: Dict[str, int] = dataclasses.field(default_factory=dict)


def _by_identity(records: Sequence[ImageRecord]) -> Dict[str, List[ImageRecord]]:
    grouped = collections.defaultdict(list)
    for record in records:
        grouped[record.identity].append(record)
    return dict(sorted(grouped.items()))


def given(gallery: Sequence[ImageRecord], probes: Sequence[ImageRecord]) -> Assignment:
    """Two folders as they are; identities are matched by folder name across them."""
    if not gallery:
        raise ValueError("the gallery folder holds no images; point --gallery_dir at a "
                         "folder of <identity>/<Name>_SSSS_VVVV.jpg images.")
    return Assignment("given", list(gallery), list(probes))


def split(records: Sequence[ImageRecord], *, seed: int,
          gallery_per_identity: int = 1) -> Assignment:
    """Per identity, ``gallery_per_identity`` random images to the gallery, the rest probes.

    Identities with no more images than that go to the gallery whole: they have nothing
    to probe with but remain candidates every probe can be confused with.
    """
    if gallery_per_identity < 1:
        raise ValueError(f"gallery_per_identity={gallery_per_identity} must be at least 1.")
    rng = np.random.default_rng(seed)
    gallery, probes, gallery_only = [], [], 0
    for images in _by_identity(records).values():
        order = rng.permutation(len(images))
        gallery += [images[i] for i in sorted(order[:gallery_per_identity])]
        probes += [images[i] for i in sorted(order[gallery_per_identity:])]
        gallery_only += len(images) <= gallery_per_identity
    return Assignment("split", gallery, probes, {"gallery_only_identities": gallery_only})


def first_file(records: Sequence[ImageRecord]) -> Assignment:
    """Per identity, the first file by name is the gallery, every other file a probe."""
    gallery, probes, gallery_only = [], [], 0
    for images in _by_identity(records).values():
        images = sorted(images, key=lambda r: r.path)
        gallery.append(images[0])
        probes += images[1:]
        gallery_only += len(images) == 1
    return Assignment("first_file", gallery, probes, {"gallery_only_identities": gallery_only})


def first_source(records: Sequence[ImageRecord]) -> Assignment:
    """Gallery = each identity's first source photo, probes = its other source photos.

    When mask flags are known the gallery keeps the unmasked variants and the probes the
    masked ones: the task then is recognising a masked face from an unmasked photo.
    Identities with a single source photo give no honest probe and are left out.
    """
    gallery, probes, single = [], [], 0
    for images in _by_identity(records).values():
        first = min(r.source for r in images)
        g = [r for r in images if r.source == first and r.masked is not True]
        p = [r for r in images if r.source != first and r.masked is not False]
        if g and p:
            gallery += g
            probes += p
        else:
            single += 1
    return Assignment("first_source", gallery, probes, {"left_out_identities": single})


def first_sources(records: Sequence[ImageRecord], count: int = 2) -> Assignment:
    """Gallery = each identity's first ``count`` source photos (fewer when that would leave
    no other source to probe with), probes = its other source photos; unmasked/masked as
    in ``first_source``. Several gallery photos per person: what tells k-NN or an SVM
    from 1-NN (with one photo each they decide alike)."""
    gallery, probes, single = [], [], 0
    for images in _by_identity(records).values():
        sources = sorted({r.source for r in images})
        chosen = set(sources[:max(1, min(count, len(sources) - 1))])
        g = [r for r in images if r.source in chosen and r.masked is not True]
        p = [r for r in images if r.source not in chosen and r.masked is not False]
        if g and p:
            gallery += g
            probes += p
        else:
            single += 1
    return Assignment(f"first_sources_{count}", gallery, probes, {"left_out_identities": single})
