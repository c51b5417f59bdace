"""Identification accuracy per group of identities (e.g. hand-assigned ethnicity labels).

The CSV maps ``identity,group``, one identity a row (a header row ``identity,group`` is
optional). Groups are reported with their support (probes and identities) and flagged
when it is small: a per-group accuracy over a handful of people says little, and the
bootstrap interval, which resamples identities, shows how little.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any, Dict, Sequence

import numpy as np

from bt_jax.evaluation.identification import HEADLINE, IdentificationResult
from bt_jax.evaluation.stats import bootstrap_ci

UNLISTED = "(not in the CSV)"


def read_groups(path: str) -> Dict[str, str]:
    """{identity: group} from a two-column CSV; conflicting rows are an error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"groups CSV {path} does not exist; pass a file of "
                                "'identity,group' rows.")
    groups: Dict[str, str] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not any(row) or row[0].startswith("#"):
                continue
            if not groups and [c.lower() for c in row[:2]] == ["identity", "group"]:
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise ValueError(f"{path} line {line}: {','.join(row)!r} is not "
                                 "'identity,group' with both fields filled in.")
            if groups.setdefault(row[0], row[1]) != row[1]:
                raise ValueError(f"{path} line {line}: identity {row[0]!r} is in group "
                                 f"{row[1]!r} here and {groups[row[0]]!r} earlier; keep one.")
    return groups


def _warn_mismatches(groups: Dict[str, str], evaluated: set, probe_ids: set) -> None:
    unknown = sorted(set(groups) - evaluated)
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        warnings.warn(f"{len(unknown)} of {len(groups)} identities in the groups CSV are not "
                      f"in the evaluated data (misspelt, or another split?): {shown}",
                      stacklevel=3)
    unlisted = sorted(probe_ids - set(groups))
    if unlisted:
        warnings.warn(f"{len(unlisted)} probe identities have no group in the CSV; they are "
                      f"reported as {UNLISTED!r}.", stacklevel=3)


def group_report(result: IdentificationResult, groups: Dict[str, str], *,
                 views: Sequence[str] = (HEADLINE, "full"), min_support: int = 30,
                 bootstrap_samples: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Per view and group: accuracy, 95% interval, support, and a small-support flag.

    Groups named in the CSV but without probes in a view are kept, with support 0 and
    no accuracy, so that a missing group is visible rather than silently absent.
    """
    a = result.assignment
    probe_ids = result.probe_identities
    evaluated = {r.identity for r in a.gallery} | set(probe_ids)
    _warn_mismatches(groups, evaluated, set(probe_ids))
    of_probe = np.asarray([groups.get(i, UNLISTED) for i in probe_ids], dtype=object)
    names = sorted(set(groups.values())) + ([UNLISTED] if UNLISTED in set(of_probe) else [])
    report = {"min_support": min_support}
    for view in views:
        mask = result.view(view)
        rows = {}
        for name in names:
            chosen = mask & (of_probe == name)
            n = int(chosen.sum())
            ci = bootstrap_ci(result.correct[chosen], probe_ids[chosen],
                              samples=bootstrap_samples, seed=seed)
            rows[name] = {"support": n, "identities": len(set(probe_ids[chosen])),
                          "accuracy": float(result.correct[chosen].mean()) if n else None,
                          "ci95": list(ci) if ci else None, "small_support": n < min_support}
        report[view] = rows
    return report
