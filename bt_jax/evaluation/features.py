"""Embeddings looked up by image path, shared by every evaluator of one run.

Each image is decoded and embedded once even when identification, verification and
the failure grid all use it.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np


class FeatureTable:
    """Rows of ``features`` keyed by image path."""

    def __init__(self, paths: Sequence[str], features: np.ndarray):
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(paths):
            raise ValueError(f"expected one feature row per image: {len(paths)} paths but "
                             f"features of shape {features.shape}.")
        self.index: Dict[str, int] = {p: i for i, p in enumerate(paths)}
        if len(self.index) != len(paths):
            raise ValueError("the same image path was given twice; pass unique paths.")
        self.features = features

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        missing = [p for p in paths if p not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} images were not embedded, e.g. {missing[0]}: "
                           "collect every evaluator's paths before embedding.")
        return self.features[[self.index[p] for p in paths]]


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norm > 0, norm, 1.0)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """Flattened pixels, standardised per image: the baseline any network must beat."""
    x = images.reshape(len(images), int(np.prod(images.shape[1:]))).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / (x.std(axis=1, keepdims=True) + 1e-6)


def embed_table(embed: Callable[[np.ndarray], np.ndarray], paths: Sequence[str],
                images: np.ndarray, *, normalize: bool = False) -> FeatureTable:
    """Embed ``images`` (one per path) into a table, L2-normalised when asked."""
    features = np.asarray(embed(images), np.float32)
    if len(features) != len(images):
        raise ValueError(f"the embedding function returned {len(features)} rows for "
                         f"{len(images)} images; it must not drop or pad examples.")
    if not np.all(np.isfinite(features)):
        raise FloatingPointError("embeddings contain NaN or Inf; check the checkpoint and "
                                 "config.data.normalization.")
    return FeatureTable(paths, l2_normalize(features) if normalize else features)
