"""One evaluation run: load and embed each image once, evaluate, write JSON and plots."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

import numpy as np

from bt_jax.data.folder import load_images
from bt_jax.evaluation import plots
from bt_jax.evaluation.features import embed_table
from bt_jax.evaluation.groups import group_report
from bt_jax.evaluation.identification import Identification
from bt_jax.evaluation.verification import Verification

RESULTS = "results.json"


class _Image(NamedTuple):
    path: str  # load_images reads only the path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def probe_outcomes(ident) -> Dict[str, list]:
    """Each probe's path, identity and outcome: what a paired comparison of two runs on
    the same probes needs (scripts/compare_results.py)."""
    return {"path": [r.path for r in ident.assignment.probes],
            "identity": [r.identity for r in ident.assignment.probes],
            "correct": ident.correct.astype(bool).tolist(),
            "source_disjoint": ident.view("source_disjoint").tolist(),
            "known": ident.known.tolist()}


@dataclasses.dataclass(frozen=True)
class Report:
    """Where and how one evaluation run reports. ``settings`` (the command line, the
    model) is stored alongside the results, so that a results file says what made it."""
    out_dir: str
    image_size: int
    title: str
    verification: Optional[Verification] = None
    groups: Optional[Dict[str, str]] = None
    normalize: bool = False
    min_support: int = 30
    failure_rows: int = 8
    progress: bool = True
    settings: Optional[Dict[str, Any]] = None


def run_evaluation(embed: Callable[[np.ndarray], np.ndarray], identification: Identification,
                   options: Report) -> Dict[str, Any]:
    """Evaluate ``embed`` and write ``options.out_dir/results.json`` and the PNG plots."""
    o = options
    out_dir, verification, groups = o.out_dir, o.verification, o.groups
    os.makedirs(out_dir, exist_ok=True)
    paths = list(dict.fromkeys(identification.paths
                               + (verification.paths if verification else [])))
    images = load_images([_Image(p) for p in paths], o.image_size, progress=o.progress)
    table = embed_table(embed, paths, images, normalize=o.normalize)
    ident = identification.evaluate(table)
    results: Dict[str, Any] = {"title": o.title, "settings": o.settings or {},
                               "feature_dim": int(table.features.shape[1]),
                               "identification": ident.summary,
                               "probes": probe_outcomes(ident)}
    if verification is not None:
        checked = verification.evaluate(table)
        results["verification"] = checked.summary
        plots.plot_roc(checked.fpr, checked.tpr, checked.summary,
                       os.path.join(out_dir, "roc.png"))
    if groups is not None:
        results["groups"] = group_report(ident, groups, min_support=o.min_support,
                                         bootstrap_samples=identification.samples,
                                         seed=identification.seed)
        plots.plot_groups(results["groups"], os.path.join(out_dir, "groups.png"))
    plots.plot_accuracy(ident.summary, os.path.join(out_dir, "accuracy.png"), title=o.title,
                        verification=results.get("verification"))
    load = lambda records: images[[table.index[r.path] for r in records]]  # noqa: E731
    results["failure_rows"] = plots.plot_failures(
        ident, load, os.path.join(out_dir, "failures.png"), limit=o.failure_rows)
    with open(os.path.join(out_dir, RESULTS), "w") as f:
        json.dump(results, f, indent=2, default=_json_default)
    return results
