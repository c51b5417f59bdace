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
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from bt_jax.identify.crops import embed_stream, list_enrolment
from bt_jax.identify.gallery import (Classifier, Gallery, calibrate, check_same_embedder,
                                     check_settings, check_threshold, check_width,
                                     holdout_people, identify, stored_threshold)


# The fields of embedding.preprocessing that an exported embedder's JSON carries too.
PREPROCESSING_KEYS = ("image_size", "crop_size", "normalization", "embedding", "metric")


class Embedder:
    """uint8 crops -> features, with the fingerprint and preprocessing that define them."""

    def __init__(self, embed, fingerprint: str, preprocessing: Dict[str, Any],
                 source: Dict[str, Any], reads: Optional[Dict[str, Any]] = None):
        self.embed, self.fingerprint = embed, fingerprint
        self.preprocessing, self.source = preprocessing, source
        # How files are decoded for ``embed``: at the network's image size, except for an
        # ONNX graph, which takes the raw crops and resizes them itself.
        self.reads = reads or preprocessing

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.embed(images)


def network_embedder(config, *, workdir: Optional[str] = None,
                     init: Optional[str] = None, progress: bool = False) -> Embedder:
    from bt_jax.network import embedding
    from bt_jax.network import embedder
    from bt_jax.runtime import run_config

    if workdir:  # as evaluate.py: the run's state fields, and its frozen trunk's weights
        run_config.check(config, workdir, action="load")
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
                    {"kind": "exported", "path": os.path.abspath(folder)},
                    getattr(model, "reads", None))


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


class Enrolled(NamedTuple):
    gallery: Gallery
    skipped: Dict[str, str]   # {path: why}
    held: List[str]           # people newly held out as strangers
    already: int              # listed files already in the gallery (by real path)


def enrol(embedder: Embedder, folder: str, *, identify_config, seed: int,
          existing: Optional[Gallery] = None, reader=None) -> Enrolled:
    """The gallery with the people of ``folder/<identity>/<image>`` added.

    Only files not yet in ``existing`` (by real path and by content) are embedded. With
    ``identify_config.holdout_fraction`` a seeded share of the *new* people is held out
    as strangers: kept apart, never enrolled, and the threshold for each FPIR is set on
    all the gallery's strangers. A person already held out stays a stranger. ``reader``
    (identify/photos.PhotoReader with ``largest_only``) takes photos instead of crops.
    """
    check_settings(identify_config)
    listed = list_enrolment(folder)
    gallery = existing or Gallery(np.zeros((0, 0)), [], [], embedder.fingerprint,
                                  embedder.preprocessing)
    check_same_embedder(gallery, embedder.fingerprint, "this model's embeddings")
    strangers = set(gallery.strangers.identities)
    new_people = {p for p, _ in listed} - set(gallery.identities) - strangers
    held = holdout_people(new_people, identify_config.holdout_fraction, seed,
                          enrolled=len(gallery.people))
    known = set(gallery.files) | set(gallery.strangers.files)
    todo = [(p, f) for p, f in listed if f not in known]
    enrolled, kept_apart, skipped = _embed_people(embedder, todo, gallery, held | strangers,
                                                  reader)
    if not enrolled.files:
        raise ValueError(f"no readable image left to enrol from {folder} ({len(skipped)} "
                         f"skipped, {len(listed) - len(todo)} already in the gallery).")
    gallery = gallery.with_faces(enrolled, kept_apart)
    gallery.source = embedder.source
    gallery.calibration = {}
    if len(kept_apart.files):
        gallery.calibration = calibrate(
            gallery, kept_apart.embeddings,
            Classifier(identify_config.classifier, identify_config.k), identify_config.fpir)
    return Enrolled(gallery, skipped, sorted(held), len(listed) - len(todo))


def _embed_people(embedder, todo, gallery: Gallery, strangers: set, reader=None):
    """(enrolled, strangers, skipped): the gallery's faces with ``todo``'s appended, each
    to the enrolled people or to the strangers."""
    owner = dict((f, p) for p, f in todo)
    enrolled, apart, skipped = gallery.enrolled, gallery.strangers, {}
    for batch in embed_stream(embedder, [f for _, f in todo], embedder.reads, skipped,
                              known=gallery.hashes + gallery.strangers.hashes, reader=reader):
        check_width(gallery, batch.features)
        names = [owner[f] for f in batch.paths]
        enrolled = enrolled.extended(*_picked(batch, names, lambda n: n not in strangers))
        apart = apart.extended(*_picked(batch, names, lambda n: n in strangers))
    return enrolled, apart, skipped


def _picked(batch, names: List[str], keep) -> tuple:
    """(features, identities, files, hashes) of the rows of ``batch`` whose name ``keep``s."""
    rows = [i for i, n in enumerate(names) if keep(n)]
    return (batch.features[rows], [names[i] for i in rows], [batch.paths[i] for i in rows],
            [batch.hashes[i] for i in rows])


# ----------------------------------------------------------------------------------------
# query


class Answers(NamedTuple):
    rows: List[Dict[str, Any]]  # one per listed identity of each readable image
    skipped: Dict[str, str]
    threshold: Optional[float]
    how: str                    # how the threshold was set, or why there is none


def query(embedder: Embedder, gallery: Gallery, paths: Sequence[str], *, identify_config,
          threshold: Optional[float] = None, reader=None) -> Answers:
    """Name the faces in ``paths``, batch by batch: memory stays flat in their number.
    Without ``threshold`` the gallery's strangers set it for ``identify_config.fpir[0]``.
    With a ``reader`` of photos (identify/photos.PhotoReader), each face found is a row
    group of its own, with its place in the photo."""
    check_settings(identify_config)
    check_threshold(threshold)
    check_same_embedder(gallery, embedder.fingerprint, "this model's embeddings")
    classifier = Classifier(identify_config.classifier, identify_config.k)
    how = f"threshold {threshold} (--threshold)"
    if threshold is None:
        threshold, how = stored_threshold(gallery, classifier, identify_config.fpir[0])
    rows, skipped = [], {}
    # embedder.reads: the gallery's preprocessing (the fingerprints agree), as this
    # embedder takes its images.
    for batch in embed_stream(embedder, list(paths), embedder.reads, skipped,
                              dedupe=False, reader=reader):
        check_width(gallery, batch.features)
        answers = identify(gallery, batch.features, classifier,
                           top_k=identify_config.top_k, threshold=threshold)
        rows += [{**_place(key, where), "decision": a.decision, "rank": r + 1,
                  "identity": name, "similarity": round(sim, 6)}
                 for key, where, a in zip(batch.paths, batch.where, answers)
                 for r, (name, sim) in enumerate(zip(a.identities, a.similarities))]
    return Answers(rows, skipped, threshold, how)


def _place(key: str, where: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The image (and, for a face of a photo, which face and where) a row answers."""
    if where is None:
        return {"image": key}
    x1, y1, x2, y2 = where["box"]
    return {"image": key.rsplit("#", 1)[0], "face": where["face"], "x1": x1, "y1": y1,
            "x2": x2, "y2": y2, "score": where["score"]}


# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows as text: a leading quote on strings that
    would otherwise be read as a formula (a person named '=cmd|...')."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_rows(rows: List[Dict[str, Any]], out: str, meta: Dict[str, Any]) -> List[str]:
    """``out``.csv and ``out``.json (the rows with what produced them)."""
    fields = ["image", "decision", "rank", "identity", "similarity"]
    if rows and "face" in rows[0]:
        fields[1:1] = ["face", "x1", "y1", "x2", "y2", "score"]
    with open(f"{out}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: spreadsheet_text(v) for k, v in row.items()} for row in rows)
    with open(f"{out}.json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    return [f"{out}.csv", f"{out}.json"]
