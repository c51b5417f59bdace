"""What ``scripts/identify.py`` does: enrol, query, and the val report, on an embedder.

An embedder is either a network (a config with a checkpoint or converted weights) or an
exported artifact (``scripts/export.py``); both give the same fingerprint for the same
weights, so a gallery enrolled with one can be queried with the other. A gallery keeps
how to rebuild its embedder, so a query needs only the gallery and the images.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bt_jax.identify.gallery import (Classifier, Gallery, calibrate, check_same_embedder,
                                     embed_images, holdout_people, identify, list_enrolment)


# The fields of embedding.preprocessing that an exported embedder's JSON carries too.
PREPROCESSING_KEYS = ("image_size", "crop_size", "normalization", "embedding", "metric")


class Embedder:
    """uint8 crops -> features, with the fingerprint and preprocessing that define them."""

    def __init__(self, embed, fingerprint: str, preprocessing: Dict[str, Any],
                 source: Dict[str, Any]):
        self.embed, self.fingerprint = embed, fingerprint
        self.preprocessing, self.source = preprocessing, source

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.embed(images)


def network_embedder(config, *, workdir: Optional[str] = None,
                     init: Optional[str] = None, progress: bool = False) -> Embedder:
    from bt_jax.network import embedding
    from bt_jax.network import embedder

    loaded = embedder.load_weights(config, workdir=workdir, init=init)
    source = {"kind": "network", "config": json.loads(config.to_json()),
              "workdir": os.path.abspath(workdir) if workdir else None,
              "init": init if init in (None, "scratch") else os.path.abspath(init)}
    return Embedder(embedder.NetworkEmbedder(config, loaded.variables, progress=progress),
                    embedding.fingerprint(config, loaded.variables),
                    embedding.preprocessing(config), source)


def exported_embedder(folder: str) -> Embedder:
    from bt_jax.identify import exported

    model = exported.load_embedder(folder)
    preprocessing = {k: model.info[k] for k in PREPROCESSING_KEYS}
    return Embedder(model, model.fingerprint, preprocessing,
                    {"kind": "exported", "path": os.path.abspath(folder)})


def rebuild_embedder(source: Dict[str, Any]) -> Embedder:
    """The embedder a gallery was enrolled with, from what it recorded."""
    if source.get("kind") == "exported":
        return exported_embedder(source["path"])
    from ml_collections import config_dict

    config = config_dict.ConfigDict(source["config"])
    return network_embedder(config, workdir=source["workdir"],
                            init=None if source["workdir"] else source["init"])


# ----------------------------------------------------------------------------------------
# enrol


def enrol(embedder: Embedder, folder: str, *, identify_config, seed: int,
          existing: Optional[Gallery] = None) -> tuple:
    """(gallery, skipped {path: why}, held-out people) from ``folder/<identity>/<image>``.

    With ``existing`` only images not yet in it are embedded and appended. With
    ``identify_config.holdout_fraction`` a seeded share of the people is held out as
    strangers, not enrolled, and the threshold for each FPIR is calibrated on them.
    """
    listed = list_enrolment(folder)
    known = set(existing.files) if existing else set()
    if existing is not None:
        check_same_embedder(existing, embedder.fingerprint, "this model's embeddings")
    held = holdout_people({p for p, _ in listed}, identify_config.holdout_fraction,
                                   seed)
    todo = [(p, os.path.abspath(f)) for p, f in listed if os.path.abspath(f) not in known]
    features, kept, skipped = embed_images(
        embedder, [f for _, f in todo], embedder.preprocessing)
    owner = dict((f, p) for p, f in todo)
    enrolled = [i for i, f in enumerate(kept) if owner[f] not in held]
    new = Gallery(features[enrolled], [owner[kept[i]] for i in enrolled],
                  [kept[i] for i in enrolled], embedder.fingerprint, embedder.preprocessing)
    if not new.files and existing is None:
        raise ValueError(f"no readable image left to enrol from {folder} ({len(skipped)} "
                         "skipped).")
    gallery = existing.add(new) if existing is not None else new
    gallery.source = embedder.source
    if held:
        strangers = [i for i, f in enumerate(kept) if owner[f] in held]
        gallery.calibration = calibrate(
            gallery, features[strangers], Classifier(identify_config.classifier,
                                                     identify_config.k),
            identify_config.fpir)
    return gallery, skipped, sorted(held)


# ----------------------------------------------------------------------------------------
# query


def query(embedder: Embedder, gallery: Gallery, paths: Sequence[str], *, identify_config,
          threshold: Optional[float] = None) -> tuple:
    """(rows, skipped): one row per listed identity of each readable image."""
    check_same_embedder(gallery, embedder.fingerprint, "this model's embeddings")
    features, kept, skipped = embed_images(embedder, list(paths),
                                                    gallery.preprocessing)
    if threshold is None and gallery.calibration:
        threshold = gallery.calibration["thresholds"][str(identify_config.fpir[0])]
    classifier = Classifier(identify_config.classifier, identify_config.k)
    answers = (identify(gallery, features, classifier, top_k=identify_config.top_k,
                                 threshold=threshold) if len(kept) else [])
    rows = [{"image": path, "decision": a.decision, "rank": r + 1, "identity": name,
             "similarity": round(sim, 6)}
            for path, a in zip(kept, answers)
            for r, (name, sim) in enumerate(zip(a.identities, a.similarities))]
    return rows, skipped, threshold


def write_rows(rows: List[Dict[str, Any]], out: str, meta: Dict[str, Any]) -> List[str]:
    """``out``.csv and ``out``.json (the rows with what produced them)."""
    fields = ["image", "decision", "rank", "identity", "similarity"]
    with open(f"{out}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(f"{out}.json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    return [f"{out}.csv", f"{out}.json"]
