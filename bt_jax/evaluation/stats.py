"""Bootstrap confidence intervals for accuracies."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def bootstrap_ci(correct: Sequence[bool], clusters: Optional[Sequence] = None, *,
                 samples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> Optional[Tuple[float, float]]:
    """Percentile bootstrap interval of the mean of ``correct``; None when it is empty.

    With ``clusters`` (the identity of each probe) whole clusters are resampled: the
    probes of one person tend to succeed or fail together, so resampling them one by
    one would claim more independent evidence than there is and narrow the interval.
    """
    correct = np.asarray(correct, np.float64)
    if correct.size == 0:
        return None
    if not 0 < level < 1 or samples < 1:
        raise ValueError(f"bootstrap level={level} must lie in (0, 1) and samples={samples} "
                         "must be positive.")
    clusters = np.arange(correct.size) if clusters is None else np.asarray(clusters)
    inverse = np.unique(clusters, return_inverse=True)[1].reshape(-1)
    hits = np.bincount(inverse, weights=correct)
    sizes = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    k = len(hits)
    means = []
    # Multinomial counts draw k clusters with replacement; chunks bound the memory.
    for start in range(0, samples, 256):
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=min(256, samples - start))
        means.append((counts @ hits) / (counts @ sizes))
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(a: dict, b: dict, view: str = "source_disjoint", *, samples: int = 1000,
                      seed: int = 0) -> dict:
    """Accuracy of run ``a`` minus run ``b`` on the same probes (their ``probes`` records
    from results.json), with a bootstrap interval that resamples identities together."""
    if a["path"] != b["path"]:
        raise ValueError("the two results hold different probes: compare evaluations of the "
                         "same data, protocol and seed.")
    chosen = np.asarray(a[view], bool) & np.asarray(b[view], bool)
    if not chosen.any():
        raise ValueError(f"no probe is in the {view!r} view of both results.")
    diff = (np.asarray(a["correct"], float) - np.asarray(b["correct"], float))[chosen]
    clusters = np.asarray(a["identity"], object)[chosen]
    return {"view": view, "probes": int(chosen.sum()), "difference": float(diff.mean()),
            "ci95": bootstrap_ci(diff, clusters, samples=samples, seed=seed)}
