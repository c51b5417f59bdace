"""Plot a training run's curve: train/val loss by step and the 1-NN accuracy by epoch.

  python scripts/plot_training.py --workdir runs/mlfw_cpu --out runs/mlfw_cpu/training.png \
      --eval "trained=runs/mlfw_cpu/eval/results.json" \
      --eval "untrained=runs/mlfw_cpu/eval_untrained/results.json"

Each --eval LABEL=PATH (a scripts/evaluate.py results.json) adds its source-disjoint
accuracy as a reference line. The run's own results.json, when there, closes the 1-NN
curve with the end-of-training evaluation.
"""

from bt_jax.runtime.logs import quiet

quiet()  # no font-cache INFO line when matplotlib first runs

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from bt_jax.evaluation.plots import plot_training  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run folder (its metrics.jsonl).",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "PNG to write.", required=True)
_EVAL = flags.DEFINE_multi_string("eval", [], "LABEL=PATH of an evaluate.py results.json to "
                                  "mark as a line.")
_TITLE = flags.DEFINE_string("title", "", "Plot title; default: the workdir's name.")


def _final_lines(items):
    lines = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--eval {item!r} is not LABEL=PATH")
        with open(path) as f:
            results = json.load(f)
        view = results["identification"]["views"]["source_disjoint"]
        lines[f"{label}, split protocol, source-disjoint"] = view["accuracy"]
    return lines


def _last_knn(workdir):
    """The end-of-training 1-NN of train.py's results.json (same protocol as the curve)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["trained"]["accuracy"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics = os.path.join(_WORKDIR.value, "metrics.jsonl")
    try:
        final = _final_lines(_EVAL.value)
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        plot_training(metrics, _OUT.value, title=_TITLE.value or os.path.basename(
            os.path.normpath(_WORKDIR.value)), final=final, last_knn=_last_knn(_WORKDIR.value))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {type(e).__name__}: {e}")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
