"""1-NN identification with the source-disjoint view as the headline.

Variants of one source photo (``Name_SSSS_VVVV`` with another mask) are near-duplicates:
a probe whose source photo is also in the gallery is matched by memory, not recognition.
Every protocol is therefore reported three ways:

* ``full``: every probe whose identity has gallery images;
* ``source_disjoint`` (the headline): those whose source photo is not in the gallery;
* ``leaked``: the rest, which share a source photo with the gallery.

Probes whose identity is absent from the gallery cannot be right; they are counted and
listed apart instead of lowering the accuracy or stopping the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from bt_jax.evaluation import knn
from bt_jax.evaluation.features import FeatureTable
from bt_jax.evaluation.protocols import Assignment, first_source
from bt_jax.evaluation.stats import bootstrap_ci

VIEWS = ("full", "source_disjoint", "leaked")
HEADLINE = "source_disjoint"


@dataclasses.dataclass
class IdentificationResult:
    """Per-probe outcomes (arrays over ``assignment.probes``) and their summary."""
    assignment: Assignment
    nearest: np.ndarray       # index into the gallery of each probe's nearest neighbour
    distance: np.ndarray
    true_nearest: np.ndarray  # nearest gallery image of the probe's own identity, for
                              # the failures only; -1 elsewhere
    correct: np.ndarray
    leaked: np.ndarray        # the probe's source photo is also in the gallery
    known: np.ndarray         # the probe's identity has gallery images
    summary: Dict[str, Any]

    def view(self, name: str) -> np.ndarray:
        """Boolean mask over the probes of one of VIEWS."""
        masks = {"full": self.known, "source_disjoint": self.known & ~self.leaked,
                 "leaked": self.known & self.leaked}
        if name not in masks:
            raise ValueError(f"view {name!r} is unknown; use one of {VIEWS}.")
        return masks[name]

    @property
    def probe_identities(self) -> np.ndarray:
        return np.asarray([r.identity for r in self.assignment.probes], dtype=object)


def _distances(x: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    if metric == "euclidean":
        return np.linalg.norm(rows - x, axis=1)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(x)
    return 1.0 - (rows @ x) / np.where(norms > 0, norms, 1.0)


def _check_meaningful(gallery_ids: np.ndarray, known: np.ndarray) -> None:
    """1-NN among one identity is always right, and with no shared identity never
    measurable: both would print a number that means nothing."""
    if len(set(gallery_ids)) < 2:
        raise ValueError(f"the gallery holds {len(set(gallery_ids))} identity: 1-NN among one "
                         "identity is right by construction. Evaluate on at least two "
                         "identities (and probes of them).")
    if not len(known):
        raise ValueError("there are no probes at all: every identity has a single source "
                         "photo, which the gallery takes. Evaluate on identities with at "
                         "least two source photos (<Name>_SSSS_VVVV: two SSSS values).")
    if not known.any():
        raise ValueError("no probe's identity is in the gallery, so no probe can be "
                         "identified: check that the gallery and probe folders name the same "
                         "people (folder names must match).")


class Identification:
    """1-NN identification of an Assignment's probes against its gallery."""

    def __init__(self, assignment: Assignment, *, metric: str = "cosine", search: str = "jax",
                 bootstrap_samples: int = 1000, seed: int = 0, progress: bool = False):
        self.assignment = assignment
        self.metric = knn.check_metric(metric)
        self.search, self.samples, self.seed = search, bootstrap_samples, seed
        self.progress = progress

    @property
    def paths(self) -> List[str]:
        return [r.path for r in self.assignment.gallery + self.assignment.probes]

    def evaluate(self, table: FeatureTable) -> IdentificationResult:
        a = self.assignment
        gallery_ids = np.asarray([r.identity for r in a.gallery], dtype=object)
        probe_ids = np.asarray([r.identity for r in a.probes], dtype=object)
        known = np.isin(probe_ids, gallery_ids)
        _check_meaningful(gallery_ids, known)  # before the search: no probes is no search
        gallery = table.rows([r.path for r in a.gallery])
        probes = table.rows([r.path for r in a.probes])
        nearest, distance = knn.nearest(gallery, probes, self.metric, self.search,
                                        **({"progress": self.progress}
                                           if self.search == "jax" else {}))
        correct = gallery_ids[nearest] == probe_ids
        sources = {(r.identity, r.source) for r in a.gallery}
        leaked = np.asarray([(r.identity, r.source) in sources for r in a.probes], bool)
        true_nearest = self._true_nearest(gallery, probes, gallery_ids, probe_ids,
                                          known & ~correct)
        result = IdentificationResult(a, nearest, distance, true_nearest, correct, leaked,
                                      known, {})
        result.summary = self._summary(result, gallery_ids, probe_ids)
        return result

    def _true_nearest(self, gallery, probes, gallery_ids, probe_ids, failed) -> np.ndarray:
        """For the failure grid: the gallery image of the right identity closest to the probe."""
        out = np.full(len(probe_ids), -1, np.int64)
        for i in np.flatnonzero(failed):
            candidates = np.flatnonzero(gallery_ids == probe_ids[i])
            out[i] = candidates[np.argmin(_distances(probes[i], gallery[candidates],
                                                     self.metric))]
        return out

    def _view(self, result: IdentificationResult, name: str, probe_ids) -> Dict[str, Any]:
        mask = result.view(name)
        n, hits = int(mask.sum()), int(result.correct[mask].sum())
        ci = bootstrap_ci(result.correct[mask], probe_ids[mask], samples=self.samples,
                          seed=self.seed)
        return {"probes": n, "identities": len(set(probe_ids[mask])), "correct": hits,
                "accuracy": hits / n if n else None, "ci95": list(ci) if ci else None}

    def _summary(self, result, gallery_ids, probe_ids) -> Dict[str, Any]:
        views = {name: self._view(result, name, probe_ids) for name in VIEWS}
        unknown = sorted(set(probe_ids[~result.known]))
        return {
            "protocol": self.assignment.protocol, "metric": self.metric, "search": self.search,
            "headline": HEADLINE, "accuracy": views[HEADLINE]["accuracy"],
            "ci95": views[HEADLINE]["ci95"],
            "gallery": len(gallery_ids), "gallery_identities": len(set(gallery_ids)),
            "probes": len(probe_ids), "identities": len(set(probe_ids[result.known])),
            "leaked_probes": views["leaked"]["probes"],
            "unknown_identity_probes": int((~result.known).sum()),
            "unknown_identities": unknown,
            "views": views, **self.assignment.notes,
        }


def identification_report(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                          records: Sequence, metric: str) -> Dict[str, Any]:
    """The end-of-training check: 1-NN on the ``first_source`` split of ``records``.

    ``accuracy`` is the source-disjoint accuracy (here every probe, by construction);
    the full summary (views, interval, leak counts) is returned alongside it.
    """
    a = first_source(records)
    if not a.gallery or not a.probes:
        raise ValueError("no identity has two source photos: the 1-NN split needs at least one")
    chosen = a.gallery + a.probes
    index = {id(r): i for i, r in enumerate(records)}
    features = embed(images[[index[id(r)] for r in chosen]])
    table = FeatureTable([r.path for r in chosen], features)
    summary = Identification(a, metric=metric).evaluate(table).summary
    return {"accuracy": summary["accuracy"], "gallery": summary["gallery"],
            "probes": summary["probes"], "identities": summary["identities"],
            "ci95": summary["ci95"], "leaked_probes": summary["leaked_probes"],
            "views": summary["views"], "headline": HEADLINE}
