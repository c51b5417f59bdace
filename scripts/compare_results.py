"""Paired difference of two evaluations of the same probes (scripts/evaluate.py results).

  python scripts/compare_results.py runs/a/eval/results.json runs/b/eval/results.json

Prints accuracy(A) - accuracy(B) on the probes both score in the view (source-disjoint by
default), with a 95% bootstrap interval that resamples identities, not probes.
"""

import argparse
import json
import sys

from bt_jax.evaluation.stats import paired_difference


def main(argv) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="results.json of run A")
    p.add_argument("b", help="results.json of run B")
    p.add_argument("--view", default="source_disjoint", choices=["source_disjoint", "known"],
                   help="'known' is the full view")
    p.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    args = p.parse_args(argv)
    runs = []
    for path in (args.a, args.b):
        try:
            with open(path) as f:
                runs.append(json.load(f)["probes"])
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"error: {path} is not a results.json with per-probe outcomes ({e}); "
                     "re-run scripts/evaluate.py to write one.")
    try:
        d = paired_difference(*runs, view=args.view, samples=args.samples)
    except ValueError as e:
        sys.exit(f"error: {e}")
    lo, hi = d["ci95"]
    print(f"A - B ({d['view']}, {d['probes']} probes): {100 * d['difference']:+.1f} points, "
          f"95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
