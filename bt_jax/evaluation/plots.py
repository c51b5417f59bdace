"""PNG figures of an evaluation: accuracy by protocol view, per group, ROC, failures."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from bt_jax.evaluation.identification import HEADLINE, VIEWS, IdentificationResult

_COLOURS = {"full": "#9e9e9e", "source_disjoint": "#1f77b4", "leaked": "#d62728",
            "verification": "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    return plt


def _error_bars(values, intervals):
    lower = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals)]
    upper = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals)]
    return np.asarray([lower, upper])


def plot_accuracy(identification: Dict[str, Any], path: str, *, title: str,
                  verification: Optional[Dict[str, Any]] = None) -> None:
    """Bars with 95% intervals for each identification view, and verification if run."""
    plt = _pyplot()
    views = identification["views"]
    labels = [f"{v.replace('_', '-')}\n(n={views[v]['probes']})" for v in VIEWS]
    values = [views[v]["accuracy"] or 0.0 for v in VIEWS]
    errors = _error_bars(values, [views[v]["ci95"] for v in VIEWS])
    colours = [_COLOURS[v] for v in VIEWS]
    if verification:
        labels.append(f"verification\n({verification['pairs']} pairs)")
        values.append(verification["accuracy"])
        errors = np.concatenate([errors, [[verification["accuracy_std"]]] * 2], axis=1)
        colours.append(_COLOURS["verification"])
    fig, ax = plt.subplots(figsize=(1.8 * len(labels) + 1, 4))
    ax.bar(labels, values, yerr=errors, capsize=4, color=colours)
    for x, (v, up) in enumerate(zip(values, errors[1])):
        ax.text(x, v + up + 0.02, f"{v:.1%}", ha="center")  # above the error bar
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\n{identification['protocol']} protocol, headline: "
                 f"{HEADLINE.replace('_', '-')}; bars: 95% bootstrap CI"
                 + ("; verification: ± std over folds" if verification else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_groups(report: Dict[str, Any], path: str, *, view: str = HEADLINE) -> None:
    """Per-group accuracy with intervals; small-support groups hatched, empty ones marked."""
    plt = _pyplot()
    rows = report[view]
    names = list(rows)
    values = [rows[n]["accuracy"] or 0.0 for n in names]
    errors = _error_bars(values, [rows[n]["ci95"] for n in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    bars = ax.bar(names, values, yerr=errors, capsize=4, color=_COLOURS[view])
    for bar, name, up in zip(bars, names, errors[1]):
        row = rows[name]
        if row["small_support"]:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        label = ("no probes" if row["accuracy"] is None
                 else f"{row['accuracy']:.1%}\nn={row['support']}")
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + up + 0.02, label,
                ha="center", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(f"{view.replace('_', '-')} accuracy (95% CI)")
    ax.set_title(f"per group (hatched: support < {report['min_support']} probes)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, summary: Dict[str, Any], path: str) -> None:
    """ROC on a log FAR axis, where the operating points of interest lie."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    floor = 1.0 / max(summary["negatives"], 1)
    ax.plot(np.maximum(fpr, floor / 2), tpr, label=f"AUC {summary['roc_auc']:.3f}")
    for far, point in summary["tar_at_far"].items():
        ax.plot(float(far), point["tar"], "o", label=f"TAR {point['tar']:.3f} @ FAR {far}")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false accept rate (resolution {floor:.1g})")
    ax.set_ylabel("true accept rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def failures(result: IdentificationResult, limit: int, seed: int = 0) -> np.ndarray:
    """Probe indices of up to ``limit`` failures: one per identity, drawn at random,
    source-disjoint ones first (the variants of one probe photo fail alike)."""
    wrong = ~result.correct & result.known
    rng = np.random.default_rng(seed)
    chosen, seen = [], set()
    for mask in (wrong & result.view(HEADLINE), wrong & result.leaked):
        for i in rng.permutation(np.flatnonzero(mask)):
            identity = result.assignment.probes[i].identity
            if identity not in seen and len(chosen) < limit:
                seen.add(identity)
                chosen.append(int(i))
    return np.asarray(chosen, np.int64)


def plot_failures(result: IdentificationResult, load: Callable[[Sequence], np.ndarray],
                  path: str, *, limit: int = 8) -> int:
    """Rows of probe | predicted gallery image | closest gallery image of the true identity.

    ``load`` decodes a list of records into uint8 images. Returns the rows drawn.
    """
    chosen = failures(result, limit)
    if len(chosen) == 0:
        return 0
    a = result.assignment
    cells = [(a.probes[i], a.gallery[result.nearest[i]], a.gallery[result.true_nearest[i]])
             for i in chosen]
    images = load([record for row in cells for record in row])
    plt = _pyplot()
    fig, axes = plt.subplots(len(cells), 3, figsize=(6.6, 2.3 * len(cells)), squeeze=False)
    for r, (i, row) in enumerate(zip(chosen, cells)):
        kind = "leaked" if result.leaked[i] else "source-disjoint"
        titles = (f"probe ({kind})\n{row[0].identity} #{row[0].source}",
                  f"predicted (d={result.distance[i]:.3f})\n{row[1].identity} #{row[1].source}",
                  f"true\n{row[2].identity} #{row[2].source}")
        for c in range(3):
            ax = axes[r, c]
            ax.imshow(images[3 * r + c])
            ax.set_title(titles[c], fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(cells)


def read_metrics(path: str) -> Dict[str, list]:
    """metrics.jsonl as columns: train steps (loss, lr) and epoch ends (val, 1-NN)."""
    import json

    train = {"step": [], "loss": []}
    epochs = {"step": [], "val_loss": [], "knn_step": [], "knn_accuracy": []}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "val_loss" in record:
                epochs["step"].append(record["step"])
                epochs["val_loss"].append(record["val_loss"])
                if "knn_accuracy" in record:
                    epochs["knn_step"].append(record["step"])
                    epochs["knn_accuracy"].append(record["knn_accuracy"])
            elif "loss" in record:
                train["step"].append(record["step"])
                train["loss"].append(record["loss"])
    return {**train, **{f"epoch_{k}": v for k, v in epochs.items()}}


def plot_training(metrics_path: str, path: str, *, title: str,
                  final: Optional[Dict[str, float]] = None,
                  last_knn: Optional[float] = None) -> None:
    """Train and val loss by step; 1-NN accuracy by epoch on a second axis, with the
    final evaluation's figures (``{label: accuracy}``) as horizontal reference lines.
    ``last_knn`` (the run's results.json) closes the curve at the last step."""
    plt = _pyplot()
    m = read_metrics(metrics_path)
    if last_knn is not None and m["epoch_step"]:
        m["epoch_knn_step"].append(m["epoch_step"][-1])
        m["epoch_knn_accuracy"].append(last_knn)
    if not m["step"]:
        raise ValueError(f"{metrics_path} has no training records; is it a run's metrics.jsonl?")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(m["step"], m["loss"], color="#9e9e9e", lw=1, label="train loss")
    ax.plot(m["epoch_step"], m["epoch_val_loss"], color="#1f77b4", marker=".", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("Barlow Twins loss")
    handles = ax.get_legend_handles_labels()
    if m["epoch_knn_step"] or final:
        acc = ax.twinx()
        if m["epoch_knn_step"]:
            acc.plot(m["epoch_knn_step"], m["epoch_knn_accuracy"], color="#d62728", marker="o",
                     ms=3, label="val 1-NN accuracy (first-source split)")
        for (label, value), style in zip((final or {}).items(), ("--", ":", "-.", "-")):
            acc.axhline(value, color="#2ca02c", ls=style, lw=1, label=f"{label}: {value:.1%}")
        acc.set_ylabel("1-NN accuracy")
        acc.set_ylim(0, None)
        acc.yaxis.set_major_formatter(lambda v, _: f"{v:.1%}")
        more = acc.get_legend_handles_labels()
        handles = (handles[0] + more[0], handles[1] + more[1])
    # Below the axes: the curves fill the plot area.
    ax.legend(*handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
