"""Putting a trained network to use: enrol people into a gallery, name masked faces.

A *gallery* is a file of L2-normalised embeddings with the identity and source file of
each, and the fingerprint of the embedder and preprocessing that made them
(``embedding.fingerprint``): embeddings are only ever compared under equal fingerprints.
A *classifier* ranks the enrolled identities for a query embedding ('1nn', 'knn',
'svm'); every listed identity comes with its cosine similarity (the best over its
gallery images), and a threshold on that similarity, calibrated for an open-set
false-positive identification rate (FPIR) on people who are not enrolled, turns a
low-similarity answer into 'unknown'.

Inputs are aligned face crops (like MLFW's): there is no face detector here, and an
image of another size than the crops the network was trained on is refused.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from bt_jax.data.folder import decode_image
from bt_jax.evaluation.features import l2_normalize

GALLERY_VERSION = 1
UNKNOWN = "unknown"
CLASSIFIERS = ("1nn", "knn", "svm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(x, np.float32))


# ----------------------------------------------------------------------------------------
# Images: aligned crops only.


def list_enrolment(folder: str) -> List[Tuple[str, str]]:
    """(identity, path) of every image in ``folder/<identity>/``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; give one with a sub-folder per "
                                "person (<identity>/<image>).")
    found = [(name, os.path.join(folder, name, f))
             for name in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name))
             for f in sorted(os.listdir(os.path.join(folder, name)))
             if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise ValueError(f"{folder} holds no images in <identity>/<image> sub-folders "
                         f"(suffixes {', '.join(IMAGE_SUFFIXES)}).")
    return found


def list_queries(paths: Sequence[str]) -> List[str]:
    """Image files named directly or found (recursively, sorted) in named folders."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += sorted(os.path.join(root, f) for root, _, files in os.walk(path)
                          for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder.")
    if not out:
        raise ValueError(f"no images found in {', '.join(paths)}.")
    return out


def read_crop(path: str, crop_size: int, image_size: int) -> np.ndarray:
    """uint8 (image_size, image_size, 3) of an aligned crop; ValueError naming the file if it
    is unreadable or not a crop_size x crop_size image."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:  # the size from the header alone
            size = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    if size != (crop_size, crop_size):
        raise ValueError(f"{path} is {size[0]}x{size[1]}, not an aligned {crop_size}x"
                         f"{crop_size} face crop (config.data.crop_size); crop and align "
                         "the face first (this project has no face detector).")
    return decode_image(data, image_size, path)


def read_crops(paths: Sequence[str], crop_size: int,
               image_size: int) -> Tuple[np.ndarray, List[int], Dict[str, str]]:
    """(images of the readable crops, their positions in ``paths``, {skipped path: why})."""
    images, kept, skipped = [], [], {}
    for i, path in enumerate(paths):
        try:
            images.append(read_crop(path, crop_size, image_size))
            kept.append(i)
        except (OSError, ValueError) as error:
            skipped[path] = str(error)
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return (np.stack(images) if images else empty), kept, skipped


# ----------------------------------------------------------------------------------------
# The gallery file.


@dataclass
class Gallery:
    embeddings: np.ndarray            # float32 (N, D), unit rows
    identities: List[str]
    files: List[str]
    fingerprint: str
    preprocessing: Dict[str, Any]
    calibration: Dict[str, Any] = field(default_factory=dict)
    source: Dict[str, Any] = field(default_factory=dict)  # how to rebuild the embedder

    def __post_init__(self):
        self.embeddings = unit_rows(self.embeddings)
        if not len(self.embeddings) == len(self.identities) == len(self.files):
            raise ValueError("a gallery needs one identity and file per embedding.")

    @property
    def people(self) -> List[str]:
        return sorted(set(self.identities))

    def add(self, other: "Gallery") -> "Gallery":
        """This gallery with ``other``'s embeddings appended (files already in it are
        kept once); both must come from the same embedder. The calibration is dropped:
        FPIR grows with the gallery, so a threshold holds for the size it was set for."""
        check_same_embedder(self, other.fingerprint, "the new embeddings")
        known = set(self.files)
        new = [i for i, f in enumerate(other.files) if f not in known]
        return Gallery(np.concatenate([self.embeddings, other.embeddings[new]]),
                       self.identities + [other.identities[i] for i in new],
                       self.files + [other.files[i] for i in new], self.fingerprint,
                       self.preprocessing, source=self.source)

    def save(self, path: str) -> str:
        """Write ``path`` (.npz) atomically: a crash never leaves half a gallery."""
        meta = {"version": GALLERY_VERSION, "fingerprint": self.fingerprint,
                "preprocessing": self.preprocessing, "calibration": self.calibration,
                "source": self.source}
        staging = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(staging, embeddings=self.embeddings, identities=np.asarray(self.identities),
                 files=np.asarray(self.files), meta=np.asarray(json.dumps(meta)))
        os.replace(staging, path)
        return path

    @classmethod
    def load(cls, path: str) -> "Gallery":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no gallery file {path}; make one with "
                                    "`scripts/identify.py enrol`.")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = (data["embeddings"], data["identities"].tolist(),
                          data["files"].tolist())
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path} is not a gallery written by `scripts/identify.py "
                             f"enrol` ({type(error).__name__}: {error}).") from None
        if meta.get("version") != GALLERY_VERSION:
            raise ValueError(f"{path}: gallery version {meta.get('version')} is not "
                             f"{GALLERY_VERSION}; enrol the people again.")
        gallery = cls(*arrays, meta["fingerprint"], meta["preprocessing"], meta["calibration"],
                      meta.get("source", {}))
        if not len(gallery.files):
            raise ValueError(f"{path} is an empty gallery: enrol at least one person.")
        return gallery


def check_same_embedder(gallery: Gallery, fingerprint: str, what: str) -> None:
    if fingerprint != gallery.fingerprint:
        raise ValueError(f"{what} come from another model or preprocessing (fingerprint "
                         f"{fingerprint}) than the gallery ({gallery.fingerprint}, "
                         f"{gallery.preprocessing}); embeddings of two networks are not "
                         "comparable. Enrol the gallery again with this model.")


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
    scores = np.sort(np.asarray(stranger_scores, np.float64))[::-1]
    allowed = int(np.floor(fpir * len(scores) + 1e-9))
    if allowed >= len(scores):
        return float("-inf")
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


def holdout_people(people: Sequence[str], fraction: float, seed: int) -> set:
    """A seeded ``fraction`` of ``people`` (at least one when fraction > 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.identify.holdout_fraction={fraction} must be in [0, 1).")
    if fraction == 0.0:
        return set()
    people = sorted(people)
    count = max(1, int(round(fraction * len(people))))
    if count >= len(people):
        raise ValueError(f"holding out {count} of {len(people)} people leaves nobody to "
                         "enrol; enrol more people or lower config.identify.holdout_fraction.")
    pick = np.random.default_rng(seed).permutation(len(people))[:count]
    return {people[i] for i in pick}


def embed_images(embed: Callable[[np.ndarray], np.ndarray], paths: Sequence[str],
                 preprocessing: Dict[str, Any]):
    """(embeddings, kept paths, skipped {path: why}) of aligned crops."""
    images, kept, skipped = read_crops(paths, preprocessing["crop_size"],
                                       preprocessing["image_size"])
    features = embed(images) if len(images) else np.zeros((0, 0), np.float32)
    return features, [paths[i] for i in kept], skipped
