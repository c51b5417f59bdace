"""Minimal 1-NN identification for the end of training.

Gallery and probes come from held-out identities and never share a source photo: a probe
that meets a variant of its own photo in the gallery measures memory, not recognition.
"""

from __future__ import annotations

import collections
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
from sklearn.neighbors import KNeighborsClassifier


def gallery_probe_split(records: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of gallery and probe images, source-disjoint within each identity.

    Per identity the gallery is its first source photo (its unmasked images when mask
    flags are known) and the probes are the other source photos (their masked images
    when known). Identities with a single source photo give no honest probe and are left out.
    """
    by_identity = collections.defaultdict(list)
    for i, rec in enumerate(records):
        by_identity[rec.identity].append(i)
    gallery, probes = [], []
    for indices in by_identity.values():
        first = min(records[i].source for i in indices)
        if all(records[i].source == first for i in indices):
            continue
        g = [i for i in indices if records[i].source == first and records[i].masked is not True]
        p = [i for i in indices if records[i].source != first and records[i].masked is not False]
        if g and p:
            gallery += g
            probes += p
    return np.asarray(gallery, int), np.asarray(probes, int)


def knn_accuracy(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
                 probe_labels: np.ndarray, metric: str = "cosine") -> float:
    """Top-1 accuracy of a 1-nearest-neighbour classifier fitted on the gallery."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"config.eval.metric={metric!r}; use 'cosine' or 'euclidean'.")
    knn = KNeighborsClassifier(n_neighbors=1, metric=metric, algorithm="brute")
    knn.fit(gallery, gallery_labels)
    return float(np.mean(knn.predict(probes) == probe_labels))


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """Flattened pixels, standardised per image: the baseline any network must beat."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / (x.std(axis=1, keepdims=True) + 1e-6)


def identification_report(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                          records: Sequence, metric: str) -> Dict[str, float]:
    """1-NN accuracy of ``embed`` features on a source-disjoint gallery/probe split."""
    gallery, probes = gallery_probe_split(records)
    if len(gallery) == 0 or len(probes) == 0:
        raise ValueError("no identity has two source photos: the 1-NN split needs at least one")
    labels = np.asarray([r.label for r in records])
    feats = embed(images[np.concatenate([gallery, probes])])
    return {
        "accuracy": knn_accuracy(feats[:len(gallery)], labels[gallery], feats[len(gallery):],
                                 labels[probes], metric),
        "gallery": int(len(gallery)), "probes": int(len(probes)),
        "identities": int(len(set(labels[gallery]))),
    }
