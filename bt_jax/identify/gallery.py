"""Putting a trained network to use: enrol people into a gallery, name masked faces.

A *gallery* is a file of L2-normalised embeddings with the identity, source file and
content hash of each, and the fingerprint of the embedder and preprocessing that made
them (``embedding.fingerprint``): embeddings are only ever compared under equal
fingerprints. A *classifier* ranks the enrolled identities for a query embedding ('1nn',
'knn', 'svm'); every listed identity comes with its cosine similarity (the best over its
gallery images), and a threshold on that similarity, calibrated for an open-set
false-positive identification rate (FPIR) on people who are not enrolled, turns a
low-similarity answer into 'unknown'. Those *strangers* are kept in the gallery file,
apart from the enrolled people and never enrolled, so that the threshold is set again
whenever the gallery grows or another FPIR is asked for.

Inputs are aligned face crops (``bt_jax.identify.crops``).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bt_jax.evaluation.features import l2_normalize
from bt_jax.identify.crops import UNKNOWN

GALLERY_VERSION = 2
CLASSIFIERS = ("1nn", "knn", "svm")
ARRAYS = ("embeddings", "identities", "files", "hashes", "stranger_embeddings",
          "stranger_identities", "stranger_files", "stranger_hashes")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(x, np.float32))


def check_settings(settings) -> None:
    """config.identify's fields, before any work."""
    if settings.classifier not in CLASSIFIERS:
        raise ValueError(f"config.identify.classifier={settings.classifier!r} is unknown; use "
                         f"one of {CLASSIFIERS}.")
    for name in ("k", "top_k"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.identify.{name}={value!r} must be a whole number of at "
                             "least 1.")
    fpirs = list(settings.fpir) if isinstance(settings.fpir, (list, tuple)) else [settings.fpir]
    bad = [f for f in fpirs if not isinstance(f, (int, float)) or not 0.0 < f < 1.0]
    if not fpirs or bad:
        raise ValueError(f"config.identify.fpir={settings.fpir!r}: every rate must lie "
                         "strictly between 0 and 1 (e.g. 0.01 for one stranger in a hundred).")
    fraction = settings.holdout_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.identify.holdout_fraction={fraction!r} must be in [0, 1).")


def check_threshold(threshold: Optional[float]) -> None:
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"--threshold={threshold} must be a cosine similarity in [-1, 1].")


# ----------------------------------------------------------------------------------------
# The gallery file.


@dataclass
class Faces:
    """Embedded faces: unit rows (N, D), and the identity, real path and sha256 of each."""
    embeddings: np.ndarray
    identities: List[str]
    files: List[str]
    hashes: List[str]

    def __post_init__(self):
        x = np.asarray(self.embeddings, np.float32)
        if x.ndim != 2 or not len(x) == len(self.identities) == len(self.files) == \
                len(self.hashes):
            raise ValueError("faces need a 2-D array of embeddings and one identity, file "
                             "and hash per row.")
        self.embeddings = unit_rows(x)

    @property
    def people(self) -> List[str]:
        return sorted(set(self.identities))

    def extended(self, features, identities, files, hashes) -> "Faces":
        """These faces and ``features`` (unit-normalised) with their names after them."""
        if not len(identities):
            return self
        if len(self.identities) and np.shape(features)[1] != self.embeddings.shape[1]:
            raise ValueError(f"embeddings of width {np.shape(features)[1]} cannot join "
                             f"faces of width {self.embeddings.shape[1]}.")
        rows = [self.embeddings] if len(self.identities) else []
        return Faces(np.concatenate(rows + [unit_rows(features)]),
                     self.identities + list(identities), self.files + list(files),
                     self.hashes + list(hashes))


def no_faces() -> Faces:
    return Faces(np.zeros((0, 0), np.float32), [], [], [])


@dataclass
class Gallery:
    embeddings: np.ndarray            # float32 (N, D), unit rows
    identities: List[str]
    files: List[str]
    fingerprint: str
    preprocessing: Dict[str, Any]
    calibration: Dict[str, Any] = field(default_factory=dict)
    source: Dict[str, Any] = field(default_factory=dict)  # how to rebuild the embedder
    hashes: Optional[List[str]] = None  # sha256 of each file
    strangers: Faces = field(default_factory=no_faces)  # held out; never enrolled

    def __post_init__(self):
        if self.hashes is None:
            self.hashes = [""] * len(self.files)
        self.embeddings = self.enrolled.embeddings
        both = set(self.identities) & set(self.strangers.identities)
        if both:
            raise ValueError(f"{sorted(both)[:3]} are both enrolled and held out as "
                             "strangers: a threshold calibrated on enrolled people is void.")

    @property
    def people(self) -> List[str]:
        return sorted(set(self.identities))

    @property
    def enrolled(self) -> Faces:
        return Faces(self.embeddings, self.identities, self.files, self.hashes)

    @property
    def width(self) -> int:
        """The embedding width (0 for a gallery with no faces yet)."""
        for x in (self.embeddings, self.strangers.embeddings):
            if len(x):
                return int(x.shape[1])
        return 0

    def with_faces(self, enrolled: Faces, strangers: Faces) -> "Gallery":
        return Gallery(enrolled.embeddings, enrolled.identities, enrolled.files,
                       self.fingerprint, self.preprocessing, dict(self.calibration),
                       dict(self.source), enrolled.hashes, strangers)

    def save(self, path: str) -> str:
        """Write ``path`` (.npz) atomically: a crash or a full disk never leaves half a
        gallery, and the staging file goes with the failure."""
        meta = {"version": GALLERY_VERSION, "fingerprint": self.fingerprint,
                "preprocessing": self.preprocessing, "calibration": self.calibration,
                "source": self.source, "feature_dim": self.width}
        staging = f"{path}.tmp-{os.getpid()}.npz"
        try:
            np.savez(staging, **_arrays(self), meta=np.asarray(json.dumps(meta)))
            os.replace(staging, path)
        except OSError as e:
            if os.path.exists(staging):
                os.remove(staging)
            kept = "the gallery on disk is unchanged" if os.path.exists(path) else \
                "nothing was written"
            raise GalleryWriteError(f"could not write the gallery {path}: {e.strerror or e}; "
                                    f"{kept}. Free disk space or choose another --out, "
                                    "then rerun.") from None
        return path

    @classmethod
    def load(cls, path: str) -> "Gallery":
        """The gallery at ``path``, checked: any damage is one line naming the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no gallery file {path}; make one with "
                                    "`scripts/identify.py enrol`.")
        meta, arrays = _read(path)
        try:
            gallery = _from_arrays(meta, arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path} is damaged: {e}. Enrol the people again.") from None
        if not len(gallery.files):
            raise ValueError(f"{path} is an empty gallery: enrol at least one person.")
        return gallery


class GalleryWriteError(ValueError):
    """The gallery file could not be written; what was on disk is unchanged."""


def _arrays(gallery: Gallery) -> Dict[str, np.ndarray]:
    out = {}
    for prefix, faces in (("", gallery.enrolled), ("stranger_", gallery.strangers)):
        out[f"{prefix}embeddings"] = faces.embeddings
        for name in ("identities", "files", "hashes"):
            out[f"{prefix}{name}"] = np.asarray(getattr(faces, name), str)
    return out


def _read(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(meta, arrays) of a gallery file; ValueError naming it if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("meta",) + ARRAYS if k not in data.files]
            if missing:
                raise KeyError(f"it lacks {', '.join(missing)}")
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a gallery written by `scripts/identify.py enrol` "
                         f"(truncated, or another file: {type(error).__name__}: {error})."
                         ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged: its meta is a JSON {type(meta).__name__}, not "
                         "an object. Enrol the people again.")
    if meta.get("version") != GALLERY_VERSION:
        raise ValueError(f"{path}: gallery version {meta.get('version')} is not "
                         f"{GALLERY_VERSION}; enrol the people again.")
    return meta, arrays


def _from_arrays(meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Gallery:
    for key, kind in (("fingerprint", str), ("preprocessing", dict), ("calibration", dict),
                      ("source", dict), ("feature_dim", int)):
        if not isinstance(meta.get(key), kind):
            raise TypeError(f"meta field {key!r} is {meta.get(key)!r}, not a {kind.__name__}")
    enrolled = _faces(arrays, "", meta["feature_dim"])
    strangers = _faces(arrays, "stranger_", meta["feature_dim"])
    return Gallery(enrolled.embeddings, enrolled.identities, enrolled.files,
                   meta["fingerprint"], meta["preprocessing"], meta["calibration"],
                   meta["source"], enrolled.hashes, strangers)


def _faces(arrays: Dict[str, np.ndarray], prefix: str, width: int) -> Faces:
    """The checked faces stored under ``prefix``: a wrong width or a non-finite or zero
    row would otherwise surface as a matmul error or a person silently never named."""
    x = arrays[f"{prefix}embeddings"]
    names = [arrays[f"{prefix}{k}"] for k in ("identities", "files", "hashes")]
    if x.ndim != 2 or (len(x) and x.shape[1] != width) or x.dtype.kind != "f":
        raise ValueError(f"{prefix}embeddings of shape {x.shape} ({x.dtype}) are not "
                         f"(N, {width}) floats (feature_dim {width})")
    if any(a.ndim != 1 or len(a) != len(x) or (len(a) and a.dtype.kind != "U") for a in names):
        raise ValueError(f"{prefix}identities, files and hashes must be {len(x)} strings each")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1) | ~np.any(x != 0, axis=1))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{prefix}embedding row {i} ({names[0][i]}, {names[1][i]}) is "
                         "not finite or all zero")
    return Faces(x, *[a.tolist() for a in names])


def check_same_embedder(gallery: Gallery, fingerprint: str, what: str) -> None:
    if fingerprint != gallery.fingerprint:
        raise ValueError(f"{what} come from another model or preprocessing (fingerprint "
                         f"{fingerprint}) than the gallery ({gallery.fingerprint}, "
                         f"{gallery.preprocessing}); embeddings of two networks are not "
                         "comparable. Enrol the gallery again with this model.")


def check_width(gallery: Gallery, features: np.ndarray) -> None:
    if gallery.width and np.shape(features)[1] != gallery.width:
        raise ValueError(f"the embedder gives {np.shape(features)[1]}-d embeddings but the "
                         f"gallery holds {gallery.width}-d ones; enrol again with this model.")


# ----------------------------------------------------------------------------------------
# Classifiers: rank the enrolled identities for each query.


def identity_similarity(gallery: Gallery, queries: np.ndarray) -> Tuple[List[str], np.ndarray]:
    """(people, (Q, people) best cosine similarity to each person's gallery images)."""
    people = gallery.people
    column = {p: i for i, p in enumerate(people)}
    owner = np.asarray([column[p] for p in gallery.identities])
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(len(people)))
    sims = unit_rows(queries) @ gallery.embeddings[order].T
    # One pass over the images, grouped by person: the max over each person's columns.
    best = np.maximum.reduceat(sims, starts, axis=1) if len(queries) else \
        np.zeros((0, len(people)), np.float32)
    return people, best


class Classifier:
    """Scores (Q, people) for ranking; higher is more likely. '1nn' ranks by similarity."""

    def __init__(self, name: str, k: int = 5):
        if name not in CLASSIFIERS:
            raise ValueError(f"classifier {name!r} is unknown (config.identify.classifier); "
                             f"use one of {CLASSIFIERS}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"config.identify.k={k!r} must be a whole number of at least 1.")
        self.name, self.k = name, k

    def scores(self, gallery: Gallery, queries: np.ndarray, similarity: np.ndarray):
        if self.name == "1nn":
            return similarity
        if self.name == "knn":
            return self._knn(gallery, queries)
        return self._svm(gallery, queries)

    def _knn(self, gallery: Gallery, queries: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import KNeighborsClassifier

        k = min(self.k, len(gallery.files))
        knn = KNeighborsClassifier(n_neighbors=k, weights="distance", metric="cosine",
                                   algorithm="brute")
        return knn.fit(gallery.embeddings, gallery.identities).predict_proba(unit_rows(queries))

    def _svm(self, gallery: Gallery, queries: np.ndarray) -> np.ndarray:
        from sklearn.svm import LinearSVC

        if len(gallery.people) < 2:
            raise ValueError("a linear SVM needs at least two enrolled people; use '1nn'.")
        svm = LinearSVC(C=1.0).fit(gallery.embeddings, gallery.identities)
        scores = svm.decision_function(unit_rows(queries))
        return scores if scores.ndim == 2 else np.stack([-scores, scores], axis=1)


@dataclass
class Answer:
    """Top-k identities of one query (best first), their similarities, and the decision."""
    identities: List[str]
    similarities: List[float]
    decision: str


def identify(gallery: Gallery, queries: np.ndarray, classifier: Classifier, *,
             top_k: int = 5, threshold: float | None = None) -> List[Answer]:
    """Rank the enrolled people for each query; below ``threshold`` the decision is
    'unknown' (the top identity's best cosine similarity is what is thresholded)."""
    if top_k < 1:
        raise ValueError(f"config.identify.top_k={top_k} must be at least 1.")
    check_threshold(threshold)
    people, similarity = identity_similarity(gallery, queries)
    # sklearn orders its classes by sorted label, as ``people`` is.
    order = np.argsort(-classifier.scores(gallery, queries, similarity), axis=1, kind="stable")
    answers = []
    for q in range(len(queries)):
        top = order[q, :top_k]
        sims = [float(similarity[q, j]) for j in top]
        known = threshold is None or sims[0] >= threshold
        answers.append(Answer([people[j] for j in top], sims,
                              people[top[0]] if known else UNKNOWN))
    return answers


# ----------------------------------------------------------------------------------------
# Open set: a threshold for a false-positive identification rate.


def threshold_for(stranger_scores: np.ndarray, fpir: float) -> float:
    """The lowest threshold at which at most ``fpir`` of the strangers' top similarities
    reach it (a stranger at or above the threshold would be wrongly named)."""
    if not 0.0 < fpir < 1.0:
        raise ValueError(f"FPIR {fpir} must lie strictly between 0 and 1.")
    if not len(stranger_scores):
        raise ValueError("no stranger image to calibrate a threshold on.")
    scores = np.sort(np.asarray(stranger_scores, np.float64))[::-1]
    allowed = int(np.floor(fpir * len(scores) + 1e-9))
    return float(np.nextafter(scores[allowed], np.inf))


def calibrate(gallery: Gallery, strangers: np.ndarray, classifier: Classifier,
              fpirs: Sequence[float]) -> Dict[str, Any]:
    """Thresholds for each FPIR from the embeddings of people not in ``gallery``, with what
    they hold for: the gallery's size and how finely the strangers resolve the rate."""
    answers = identify(gallery, strangers, classifier, top_k=1)
    top = np.asarray([a.similarities[0] for a in answers])
    return {"thresholds": {str(f): threshold_for(top, f) for f in fpirs},
            "fpir": [float(f) for f in fpirs], "strangers": int(len(top)),
            "resolution": 1.0 / max(len(top), 1), "gallery_people": len(gallery.people),
            "gallery_images": len(gallery.files), "classifier": classifier.name}


def stored_threshold(gallery: Gallery, classifier: Classifier,
                     fpir: float) -> Tuple[Optional[float], str]:
    """(threshold, how it was set) from the gallery's own strangers, for this gallery as it
    is now and this classifier; (None, why not) when it holds none."""
    s = gallery.strangers
    if not len(s.files):
        return None, ("no 'unknown' threshold: the gallery holds no held-out strangers (enrol "
                      "with --config.identify.holdout_fraction, or pass --threshold); every "
                      "face gets the nearest enrolled name")
    threshold = calibrate(gallery, s.embeddings, classifier, [fpir])["thresholds"][str(fpir)]
    return threshold, (f"threshold {threshold:.4f} for FPIR {fpir}, set on {len(s.files)} "
                       f"images of {len(s.people)} held-out strangers against "
                       f"{len(gallery.people)} enrolled people")


def holdout_people(people: Sequence[str], fraction: float, seed: int, *,
                   enrolled: int = 0) -> set:
    """A seeded ``fraction`` of ``people`` (at least one when fraction > 0), leaving at
    least one person to enrol beside the ``enrolled`` ones already in a gallery."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.identify.holdout_fraction={fraction} must be in [0, 1).")
    if fraction == 0.0 or not people:
        return set()
    people = sorted(people)
    count = max(1, int(round(fraction * len(people))))
    if count >= len(people) and not enrolled:
        raise ValueError(f"holding out {count} of {len(people)} people leaves nobody to "
                         "enrol; enrol more people or lower config.identify.holdout_fraction.")
    pick = np.random.default_rng(seed).permutation(len(people))[:count]
    return {people[i] for i in pick}
