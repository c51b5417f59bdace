"""Face verification on pairs files: 10-fold accuracy, ROC AUC and TAR at fixed FAR.

Three pairs-file formats are read, each with its folds as consecutive blocks of pairs:

* LFW ``pairs.txt``: a header ``<folds> <n>``, then per fold ``n`` lines ``name i j``
  (same person) and ``n`` lines ``name1 i name2 j`` (different), images
  ``name/name_<iiii>.jpg``;
* CALFW / CPLFW: two lines per pair, ``<file> <token>``; the token is 0 for a pair of
  different people;
* MLFW (and :func:`write_pairs`): ``<file1> <file2> <1|0>`` per line, tab separated.

File names resolve against a root folder, directly or inside the folder named after the
identity (``root/Name/Name_SSSS_VVVV.jpg`` for a bare ``Name_SSSS_VVVV.jpg``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from bt_jax.data.folder import ImageRecord, parse_image_name
from bt_jax.evaluation import knn
from bt_jax.evaluation.features import FeatureTable

FARS = (1e-3, 1e-2)
_IDENTITY = re.compile(r"^(?P<name>.+?)(_\d{4})+$")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Image pairs (absolute paths), whether each shows one person, and its fold."""
    first: List[str]
    second: List[str]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def _resolve(entry: str, root: str) -> str:
    direct = os.path.join(root, entry)
    if os.path.isfile(direct) or os.sep in entry or "/" in entry:
        return os.path.abspath(direct)
    match = _IDENTITY.match(os.path.splitext(entry)[0])
    nested = os.path.join(root, match["name"], entry) if match else direct
    return os.path.abspath(nested)


def _consecutive_folds(count: int, folds: int) -> np.ndarray:
    return (np.arange(count) * folds) // max(count, 1)


def _parse_lfw(rows: List[List[str]]) -> Tuple[list, np.ndarray, np.ndarray]:
    folds, per_fold = int(rows[0][0]), int(rows[0][1])
    names, same = [], []
    for row in rows[1:]:
        if len(row) == 3:
            names.append((f"{row[0]}/{row[0]}_{int(row[1]):04d}.jpg",
                          f"{row[0]}/{row[0]}_{int(row[2]):04d}.jpg"))
        elif len(row) == 4:
            names.append((f"{row[0]}/{row[0]}_{int(row[1]):04d}.jpg",
                          f"{row[2]}/{row[2]}_{int(row[3]):04d}.jpg"))
        else:
            raise ValueError(f"LFW pairs line {' '.join(row)!r} has {len(row)} fields; "
                             "expected 'name i j' or 'name1 i name2 j'.")
        same.append(len(row) == 3)
    if len(names) != 2 * folds * per_fold:
        raise ValueError(f"the LFW header promises {folds} folds of 2 x {per_fold} pairs "
                         f"but the file holds {len(names)} pairs.")
    return names, np.asarray(same), np.arange(len(names)) // (2 * per_fold)


def _parse_two_line(rows: List[List[str]], folds: int):
    if len(rows) % 2:
        raise ValueError(f"a CALFW-style pairs file has two lines per pair; this one has "
                         f"{len(rows)} lines.")
    names = [(rows[i][0], rows[i + 1][0]) for i in range(0, len(rows), 2)]
    same = np.asarray([int(rows[i][1]) != 0 for i in range(0, len(rows), 2)])
    return names, same, _consecutive_folds(len(names), folds)


def _parse_three_column(rows: List[List[str]], folds: int):
    bad = [" ".join(r) for r in rows if len(r) != 3 or r[2] not in ("0", "1")]
    if bad:
        raise ValueError(f"pairs line {bad[0]!r} is not '<file1> <file2> <1|0>' (nor LFW or "
                         "CALFW format).")
    names = [(r[0], r[1]) for r in rows]
    return names, np.asarray([r[2] == "1" for r in rows]), _consecutive_folds(len(rows), folds)


def read_pairs(path: str, root: str, *, folds: int = 10) -> Pairs:
    """Pairs of an LFW, CALFW/CPLFW or MLFW pairs file, image paths under ``root``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs file {path} does not exist; pass an existing file "
                                "or --pairs=generate to write one from the data folder.")
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    if not rows:
        raise ValueError(f"pairs file {path} is empty.")
    if len(rows[0]) == 2 and all(x.isdigit() for x in rows[0]):
        names, same, fold = _parse_lfw(rows)
    elif all(len(r) == 2 for r in rows):
        names, same, fold = _parse_two_line(rows, folds)
    else:
        names, same, fold = _parse_three_column(rows, folds)
    first = [_resolve(a, root) for a, _ in names]
    second = [_resolve(b, root) for _, b in names]
    missing = sorted({p for p in first + second if not os.path.isfile(p)})
    if missing:
        raise FileNotFoundError(f"{len(missing)} images named in {path} are not under {root}, "
                                f"e.g. {missing[0]}; point --data_dir at the folder the pairs "
                                "file refers to.")
    return Pairs(first, second, same.astype(bool), fold.astype(np.int64))


# ------------------------------------------------------------------- generating pairs


def _identities_by_fold(records: Sequence[ImageRecord], folds: int, rng) -> List[list]:
    """Identities dealt to folds at random: no person appears in two folds."""
    by_identity: Dict[str, list] = {}
    for record in records:
        by_identity.setdefault(record.identity, []).append(record)
    names = sorted(by_identity)
    dealt: List[list] = [[] for _ in range(folds)]
    for position, k in enumerate(rng.permutation(len(names))):
        dealt[position % folds].append(by_identity[names[k]])
    return dealt


def _positives(identities: List[list], rng) -> List[tuple]:
    """Pairs of two different source photos, interleaved so that no person dominates."""
    shuffled = []
    for images in identities:
        pairs = [(a, b) for i, a in enumerate(images) for b in images[i + 1:]
                 if a.source != b.source]
        shuffled.append([pairs[k] for k in rng.permutation(len(pairs))])
    longest = max((len(p) for p in shuffled), default=0)
    return [p[r] for r in range(longest) for p in shuffled if r < len(p)]


def _negatives(identities: List[list], count: int, rng) -> List[tuple]:
    """``count`` distinct pairs of images of two different people, drawn at random."""
    flat = [(k, record) for k, images in enumerate(identities) for record in images]
    chosen, out = set(), []
    for _ in range(100 * count):
        if len(out) == count or len(identities) < 2:
            break
        i, j = sorted(rng.integers(len(flat), size=2))
        if flat[i][0] != flat[j][0] and (i, j) not in chosen:
            chosen.add((i, j))
            out.append((flat[i][1], flat[j][1]))
    return out


def generate_pairs(records: Sequence[ImageRecord], *, seed: int, folds: int = 10,
                   pairs_per_fold: int = 300) -> Pairs:
    """LFW-style pairs from a folder: per fold ``n`` positive then ``n`` negative pairs.

    Folds hold disjoint identities, so the threshold is always chosen on other people.
    Positive pairs always join two different source photos: two variants of one photo
    would only test whether the network sees through a synthetic mask. ``n`` is
    ``pairs_per_fold`` or, with a warning, what the poorest fold can supply.
    """
    rng = np.random.default_rng(seed)
    dealt = _identities_by_fold(records, folds, rng)
    positives = [_positives(identities, rng) for identities in dealt]
    n = min([pairs_per_fold] + [len(p) for p in positives])
    if n == 0:
        raise ValueError(f"a fold has no identity with two source photos; use fewer folds "
                         f"(now {folds}) or a folder with more identities.")
    negatives = [_negatives(identities, n, rng) for identities in dealt]
    n = min([n] + [len(neg) for neg in negatives])
    if n == 0:
        raise ValueError(f"a fold holds a single identity, so no different-person pair; use "
                         f"fewer folds (now {folds}) or a folder with more identities.")
    if n < pairs_per_fold:
        warnings.warn(f"only {n} positive and {n} negative pairs per fold (asked for "
                      f"{pairs_per_fold}): the folder has too few source-disjoint pairs.",
                      stacklevel=2)
    chosen = [pair for k in range(folds) for pair in positives[k][:n] + negatives[k][:n]]
    same = np.tile(np.repeat([True, False], n), folds)
    return Pairs([a.path for a, _ in chosen], [b.path for _, b in chosen], same,
                 np.repeat(np.arange(folds), 2 * n))


def write_pairs(pairs: Pairs, path: str, root: str) -> None:
    """MLFW format: ``<file1>\\t<file2>\\t<1|0>``, paths relative to ``root``, fold-ordered."""
    if len(pairs) and np.any(np.diff(pairs.fold) < 0):
        raise ValueError("pairs must be sorted by fold: the file keeps folds as blocks.")
    with open(path, "w") as f:
        for a, b, same in zip(pairs.first, pairs.second, pairs.same):
            f.write(f"{os.path.relpath(a, root)}\t{os.path.relpath(b, root)}\t{int(same)}\n")


# ----------------------------------------------------------------------- the metrics


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (``score > t`` means same) with the highest accuracy on these pairs.

    Every cut between two distinct sorted scores is tried, plus below and above all;
    the threshold is the midpoint of the cut; ties go to the lowest threshold.
    """
    order = np.argsort(scores, kind="stable")
    s, y = np.asarray(scores, np.float64)[order], np.asarray(same, bool)[order]
    # Cut i calls s[:i] different and s[i:] same.
    right = np.concatenate([[0], np.cumsum(~y)]) + np.concatenate([np.cumsum(y[::-1])[::-1],
                                                                   [0]])
    valid = np.concatenate([[True], s[1:] > s[:-1], [True]])
    i = int(np.flatnonzero(valid)[np.argmax(right[valid])])
    if i == 0:
        return float(s[0] - 1.0)
    if i == len(s):
        return float(s[-1] + 1.0)
    return float((s[i - 1] + s[i]) / 2)


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> Dict[str, Any]:
    """Accuracy on each fold at the threshold best on all the other folds; mean and std.

    The std is over folds (ddof=0), as the LFW-style papers report it.
    """
    accuracies, thresholds = [], []
    for k in np.unique(fold):
        test = fold == k
        t = best_threshold(scores[~test], same[~test])
        accuracies.append(float(np.mean((scores[test] > t) == same[test])))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "fold_thresholds": thresholds}


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> Tuple[float, float]:
    """(true accept rate, threshold) at the lowest threshold whose false accept rate <= far."""
    negatives = np.sort(np.asarray(scores)[~same])[::-1]
    allowed = int(np.floor(far * len(negatives) + 1e-9))
    # Accept scores strictly above the (allowed+1)-th highest negative score.
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float(np.mean(scores[same] > threshold)), float(threshold)


def pair_scores(table: FeatureTable, pairs: Pairs, metric: str) -> np.ndarray:
    """Similarity of each pair, higher = more alike: cosine, or minus the distance."""
    a, b = table.rows(pairs.first), table.rows(pairs.second)
    if knn.check_metric(metric) == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)


def _photo(path: str):
    """(identity folder, source photo) of an MLFW-style path, None for other names."""
    try:
        _, source, _ = parse_image_name(os.path.basename(path))
    except ValueError:
        return None
    return os.path.basename(os.path.dirname(path)), source


def same_source_positives(pairs: Pairs) -> int:
    """Positive pairs that join two variants of one source photo: memory, not recognition."""
    count = 0
    for a, b, same in zip(pairs.first, pairs.second, pairs.same):
        count += bool(same) and _photo(a) is not None and _photo(a) == _photo(b)
    return count


@dataclasses.dataclass
class VerificationResult:
    scores: np.ndarray
    same: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    summary: Dict[str, Any]


class Verification:
    """Verification of ``pairs``: 10-fold accuracy, ROC AUC, TAR at FAR 1e-3 and 1e-2."""

    def __init__(self, pairs: Pairs, *, metric: str = "cosine", fars: Sequence[float] = FARS):
        if len(pairs) == 0 or pairs.same.all() or not pairs.same.any():
            raise ValueError("verification needs both same-person and different-person pairs.")
        self.pairs, self.metric, self.fars = pairs, knn.check_metric(metric), tuple(fars)

    @property
    def paths(self) -> List[str]:
        return list(dict.fromkeys(self.pairs.first + self.pairs.second))

    def evaluate(self, table: FeatureTable) -> VerificationResult:
        from sklearn.metrics import roc_auc_score, roc_curve

        scores, same = pair_scores(table, self.pairs, self.metric), self.pairs.same
        fpr, tpr, _ = roc_curve(same, scores)
        negatives = int((~same).sum())
        tar = {}
        for far in self.fars:
            rate, threshold = tar_at_far(scores, same, far)
            tar[f"{far:g}"] = {"tar": rate, "threshold": threshold,
                               "false_accepts_allowed": int(np.floor(far * negatives + 1e-9))}
        summary = {"metric": self.metric, "pairs": len(same), "positives": int(same.sum()),
                   "negatives": negatives, "folds": int(len(np.unique(self.pairs.fold))),
                   "same_source_positives": same_source_positives(self.pairs),
                   **ten_fold_accuracy(scores, same, self.pairs.fold),
                   "roc_auc": float(roc_auc_score(same, scores)), "tar_at_far": tar}
        return VerificationResult(scores, same, fpr, tpr, summary)
