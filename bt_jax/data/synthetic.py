"""Synthetic masked faces: the embedded default dataset of bt_jax.

The generator writes the same layout as the real MLFW data,
``root/<Name>/<Name>_SSSS_VVVV.jpg``, so one loader serves both:

* ``Name`` is ``Synth_00042`` (identity index, zero padded);
* ``SSSS`` is the source photo, from ``0001``: one draw of pose, lighting,
  expression, clothes and background for that identity;
* ``VVVV`` is the variant: ``0000`` is the unmasked photo, ``0001``.. are the
  same photo with different masks (shape and colour).

``root/masked.txt`` lists every masked image (``Name/file.jpg``, one a line),
because, unlike the real data, here we know which images are masked.

Faces come from ``bt_jax.data.faces`` and masks from ``bt_jax.data.masks``;
every draw is keyed by (seed, identity[, source[, variant]]), so identity ``i``
looks the same whatever ``num_identities`` is, and the same seed gives
byte-identical files.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

from bt_jax.data.faces import (Identity, Photo, draw_glasses, finish, render_base,
                               sample_identity, sample_photo)
from bt_jax.data.masks import MaskSpec, draw_mask, sample_mask


def render_variants(ident: Identity, photo: Photo, masks: Sequence[MaskSpec],
                    image_size: int = 64) -> list[np.ndarray]:
    """Render one photo unmasked and then once per mask: [unmasked, *masked]."""
    base, lay = render_base(ident, photo, image_size)
    out = []
    for mask in [None, *masks]:
        c = base.copy()
        if mask is not None:
            draw_mask(c, ident, lay, mask)
        draw_glasses(c, ident, lay)
        out.append(finish(c, photo))
    return out


# ------------------------------------------------------------------ writing


def identity_name(index: int) -> str:
    """Folder name of identity ``index``; it has no trailing 4-digit fields."""
    return f"Synth_{index:05d}"


def _check_args(num_identities, sources_per_identity, masked_variants, image_size,
                seed, first_identity):
    checks = [
        (num_identities >= 1, f"num_identities must be >= 1, got {num_identities}"),
        (1 <= sources_per_identity <= 9999,
         f"sources_per_identity must be in 1..9999 (4-digit SSSS), got {sources_per_identity}"),
        (0 <= masked_variants <= 9998,
         f"masked_variants must be in 0..9998 (4-digit VVVV), got {masked_variants}"),
        (image_size >= 16, f"image_size must be >= 16 pixels, got {image_size}"),
        (seed >= 0, f"seed must be a non-negative integer, got {seed}"),
        (first_identity >= 0, f"first_identity must be >= 0, got {first_identity}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def write_synthetic_dataset(root, *, num_identities: int, sources_per_identity: int = 4,
                            masked_variants: int = 2, image_size: int = 64, seed: int = 0,
                            first_identity: int = 0, progress: bool = True) -> pathlib.Path:
    """Write identities ``first_identity .. first_identity + num_identities - 1``.

    Files already in ``root`` are overwritten when their names collide and
    otherwise left alone; ``root/masked.txt`` is rewritten and lists only the
    masked images written by this call. Returns ``root`` as a Path.
    """
    _check_args(num_identities, sources_per_identity, masked_variants, image_size,
                seed, first_identity)
    from tqdm.auto import tqdm   # local: only needed when writing

    root = pathlib.Path(root)
    masked = []
    indices = range(first_identity, first_identity + num_identities)
    for index in tqdm(indices, desc="synthetic faces", unit="id", disable=not progress):
        name = identity_name(index)
        (root / name).mkdir(parents=True, exist_ok=True)
        ident = sample_identity(seed, index)
        for source in range(1, sources_per_identity + 1):
            photo = sample_photo(seed, index, source)
            masks = [sample_mask(seed, index, source, v) for v in range(1, masked_variants + 1)]
            for variant, pixels in enumerate(render_variants(ident, photo, masks, image_size)):
                file = f"{name}_{source:04d}_{variant:04d}.jpg"
                Image.fromarray(pixels).save(root / name / file, quality=95)
                if variant:
                    masked.append(f"{name}/{file}")
    (root / "masked.txt").write_text("".join(line + "\n" for line in masked))
    return root
