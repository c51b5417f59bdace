"""A markdown table of scripts/evaluate.py results: every protocol view, with 95% CIs.

  python scripts/results_table.py "trained=runs/mlfw_cpu/eval/results.json" \
      "untrained=runs/mlfw_cpu/eval_scratch/results.json"

Each argument is LABEL=PATH; rows follow the argument order. Ratios of the headline
(source-disjoint) accuracy to the rows named by --vs are added as columns.
"""

import argparse
import json
import sys

VIEWS = ("source_disjoint", "full", "leaked")


def _cell(view) -> str:
    if view["accuracy"] is None:
        return "n/a"
    lo, hi = view["ci95"]
    return f"{100 * view['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(rows, vs=()) -> str:
    head = ["", "source-disjoint (headline)", "full", "leaked", "probes (disjoint/all)"]
    head += [f"x {name}" for name in vs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    headline = {label: r["identification"]["views"]["source_disjoint"]["accuracy"]
                for label, r in rows}
    for label, r in rows:
        views = r["identification"]["views"]
        cells = [label] + [_cell(views[v]) for v in VIEWS]
        cells.append(f"{views['source_disjoint']['probes']}/{r['identification']['probes']}")
        for name in vs:
            base = headline[name]
            cells.append(f"{headline[label] / base:.1f}" if base else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", help="LABEL=results.json")
    p.add_argument("--vs", action="append", default=[], help="label to divide the headline by")
    args = p.parse_args(argv)
    rows = []
    for item in args.rows:
        label, sep, path = item.partition("=")
        if not sep:
            sys.exit(f"error: {item!r} is not LABEL=PATH (e.g. trained=runs/x/eval/results.json)")
        try:
            with open(path) as f:
                rows.append((label, json.load(f)))
        except (OSError, ValueError) as e:
            sys.exit(f"error: cannot read {path}: {e}")
    unknown = [v for v in args.vs if v not in dict(rows)]
    if unknown:
        sys.exit(f"error: --vs {unknown} names no row; rows are {[l for l, _ in rows]}")
    print(table(rows, args.vs))


if __name__ == "__main__":
    main(sys.argv[1:])
