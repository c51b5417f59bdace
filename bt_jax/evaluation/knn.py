"""1-nearest-neighbour search of probes in a gallery, Euclidean or cosine.

Two backends find the same neighbours (up to exact ties): scikit-learn's brute-force
search and a batched JAX search that keeps the gallery on the device and walks the
probes in blocks of one fixed shape, so one compilation serves every block. Their speed
at 10k x 10k is in docs/evaluation.md (``scripts/benchmark_knn.py``).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "euclidean")
BACKENDS = ("jax", "sklearn")
# Bytes of one block's probe-by-gallery distance matrix.
_BLOCK_BYTES = 1 << 28


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; use one of {METRICS} "
                         "(config.eval.metric).")
    return metric


def nearest_sklearn(gallery: np.ndarray, probes: np.ndarray,
                    metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """(index, distance) of each probe's nearest gallery row, by scikit-learn."""
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=1, metric=check_metric(metric), algorithm="brute")
    distance, index = search.fit(gallery).kneighbors(probes)
    return index[:, 0].astype(np.int64), distance[:, 0].astype(np.float32)


def _unit_rows(x):
    # Zero rows stay zero (cosine distance 1 to everything), as in scikit-learn.
    norm = jnp.linalg.norm(x, axis=1, keepdims=True)
    return x / jnp.where(norm > 0, norm, 1.0)


@functools.partial(jax.jit, static_argnames="metric")
def _nearest_block(gallery, probes, metric: str):
    """Nearest gallery row of each probe in one block; ``gallery`` is prepared."""
    dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        distance = 1.0 - dot(_unit_rows(probes), gallery.T)
    else:
        squared = (jnp.sum(probes**2, 1)[:, None] - 2.0 * dot(probes, gallery.T)
                   + jnp.sum(gallery**2, 1)[None, :])
        distance = jnp.maximum(squared, 0.0)
    index = jnp.argmin(distance, axis=1)
    best = jnp.take_along_axis(distance, index[:, None], axis=1)[:, 0]
    return index, jnp.sqrt(best) if metric == "euclidean" else best


def nearest_jax(gallery: np.ndarray, probes: np.ndarray, metric: str, *,
                block: int | None = None, progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(index, distance) of each probe's nearest gallery row, in padded probe blocks."""
    from tqdm.auto import tqdm

    check_metric(metric)
    gallery = np.asarray(gallery, np.float32)
    probes = np.asarray(probes, np.float32)
    if metric == "euclidean":
        # Distances do not change under a shift; centring keeps |p|^2 - 2pg + |g|^2
        # from cancelling catastrophically in float32 when features have large norms.
        centre = gallery.mean(axis=0)
        gallery, probes = gallery - centre, probes - centre
    prepared = jnp.asarray(gallery)
    if metric == "cosine":
        prepared = _unit_rows(prepared)
    block = block or max(1, min(len(probes), _BLOCK_BYTES // (4 * max(len(gallery), 1))))
    index, distance = [], []
    for start in tqdm(range(0, len(probes), block), desc="1-NN search", unit="block",
                      disable=not progress):
        part = probes[start:start + block]
        padded = np.zeros((block, probes.shape[1]), np.float32)
        padded[:len(part)] = part
        i, d = _nearest_block(prepared, padded, metric)
        index.append(np.asarray(i)[:len(part)])
        distance.append(np.asarray(d)[:len(part)])
    return np.concatenate(index).astype(np.int64), np.concatenate(distance)


def nearest(gallery: np.ndarray, probes: np.ndarray, metric: str, backend: str = "jax",
            **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest gallery row of each probe with the chosen backend."""
    if len(gallery) == 0:
        raise ValueError("the gallery is empty: 1-NN needs at least one gallery image.")
    if len(probes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if backend == "jax":
        return nearest_jax(gallery, probes, metric, **kwargs)
    if backend == "sklearn":
        return nearest_sklearn(gallery, probes, metric)
    raise ValueError(f"search backend {backend!r} is unknown; use one of {BACKENDS}.")
