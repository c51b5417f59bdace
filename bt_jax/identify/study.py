"""How well faces are found and aligned, measured on composites (identify/composites.py).

A true face counts as found when a detection's box holds the centre of its true
landmarks and is between 1 and 6 inter-ocular distances wide (detections are matched
highest score first, each to one face); every other detection is a false one. Landmark
error is the mean distance of the five points to the truth over the true inter-ocular
distance (the usual normalised mean error). The found faces' aligned crops are kept for
the round trip through the recogniser.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from bt_jax.evaluation.stats import bootstrap_ci
from bt_jax.identify.align import ALIGN_FROM, align, similarity
from bt_jax.identify.composites import Composite, compose
from bt_jax.identify.detect import Faces


def read_labels(path: str, root: str) -> Dict[str, str]:
    """{real path of the image: 'masked' or 'unmasked'} from lines '<kind> <identity>/<file>'
    (paths relative to ``root``; '#' starts a comment line)."""
    labels = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            kind, name = line.split()
            labels[os.path.realpath(os.path.join(root, name))] = kind
    return labels


def inter_ocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def match(truth: Sequence[np.ndarray], faces: Faces) -> List[int]:
    """For each true landmark set, the index of its detection, or -1."""
    owner = [-1] * len(truth)
    for d in np.argsort(-faces.scores, kind="stable"):
        x1, y1, x2, y2 = faces.boxes[d]
        for t, points in enumerate(truth):
            cx, cy = points.mean(0)
            iod = inter_ocular(points)
            if (owner[t] < 0 and x1 <= cx <= x2 and y1 <= cy <= y2
                    and iod <= x2 - x1 <= 6 * iod):
                owner[t] = int(d)
                break
    return owner


def nme(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(found - truth, axis=1).mean() / inter_ocular(truth))


def on_crop(detector, crop: np.ndarray, pad: int) -> Optional[np.ndarray]:
    """The landmarks the detector gives a crop in its own pixels (padded by ``pad`` grey
    pixels a side, as a face needs some room), or None if it finds no face."""
    canvas = np.pad(crop, ((pad, pad), (pad, pad), (0, 0)), constant_values=127)
    faces = detector(canvas)
    return faces.landmarks[faces.largest()] - pad if len(faces) else None


def consistency(row: Dict, placed, reference: Optional[np.ndarray]) -> Optional[float]:
    """Error of a found face's landmarks against the detector's own landmarks on the
    untransformed crop, mapped like the crop: the detector's error under scale, rotation
    and a new background, apart from how far the face itself is from the template."""
    if not row["found"] or reference is None:
        return None
    mapped = (placed.matrix @ np.c_[reference, np.ones(5)].T).T[:, :2]
    return nme(row["landmarks"], mapped)


def measure(composite: Composite, faces: Faces, crop_size: int,
            align_from: str = "five") -> Dict:
    """Per true face: found, error, the recovered crop; and the false detections."""
    truth = [p.landmarks for p in composite.faces]
    owner = match(truth, faces)
    rows = []
    for placed, d in zip(composite.faces, owner):
        row = {"item": placed.item, "scale": placed.scale, "angle": placed.angle,
               "found": d >= 0, "nme": None, "crop": None, "landmarks": None,
               "placed": placed}
        if d >= 0:
            row.update(nme=nme(faces.landmarks[d], placed.landmarks),
                       crop=align(composite.image, faces.landmarks[d], crop_size, align_from),
                       landmarks=faces.landmarks[d])
        rows.append(row)
    return {"faces": rows, "false": len(faces) - sum(d >= 0 for d in owner)}


def summarise(rows: Sequence[Dict], canvases: int, false: int,
              groups: Optional[Sequence[str]] = None) -> Dict:
    """Detection rate (95% interval, resampling faces), false detections per canvas,
    landmark error mean and 95th percentile, over ``rows``."""
    found = np.asarray([r["found"] for r in rows], bool)
    errors = np.asarray([r["nme"] for r in rows if r["found"]], float)
    own = np.asarray([r["consistency"] for r in rows if r.get("consistency") is not None])
    ids = np.asarray(groups if groups is not None else np.arange(len(rows)))
    ci = bootstrap_ci(found, ids, samples=1000, seed=0) if len(found) else None
    return {"faces": len(rows), "found": int(found.sum()),
            "detection_rate": float(found.mean()) if len(found) else None,
            "detection_ci95": list(ci) if ci else None,
            "false_per_canvas": false / canvases if canvases else None,
            "nme_mean": float(errors.mean()) if len(errors) else None,
            "nme_p95": float(np.percentile(errors, 95)) if len(errors) else None,
            "nme_own_mean": float(own.mean()) if len(own) else None,
            "nme_own_p95": float(np.percentile(own, 95)) if len(own) else None}


def run(detector, crops: Sequence[np.ndarray], items: Sequence[int], rng: np.random.Generator,
        *, scales, crop_size: int, per_canvas: int = 4, progress=None, keep=None) -> Dict:
    """Every item of ``items`` placed once, 1..``per_canvas`` to a canvas (a face that does
    not fit goes to the next one), detected and measured. ``keep(composite, faces)`` sees
    each canvas (to save it). Rows follow the order faces were placed."""
    queue, rows, canvases, false = list(items), [], 0, 0
    bar = progress(total=len(queue)) if progress else None
    while queue:
        take = queue[:int(rng.integers(1, per_canvas + 1))]
        composite = compose(rng, crops, take, scales=scales)
        placed = {p.item for p in composite.faces}
        queue = [i for i in take if i not in placed] + queue[len(take):]
        faces = detector(composite.image)
        measured = measure(composite, faces, crop_size, detector.settings.align_from)
        rows += measured["faces"]
        canvases, false = canvases + 1, false + measured["false"]
        if keep:
            keep(composite, faces)
        if bar:
            bar.update(len(placed))
    if bar:
        bar.close()
    return {"rows": rows, "canvases": canvases, "false": false}


def by_scale(rows: Sequence[Dict], canvases: int, false: int, bins) -> Dict[str, Dict]:
    """summarise() per scale bin [low, high); false detections are spread over the bins
    in proportion to their faces (a false box belongs to no face)."""
    out = {}
    for low, high in bins:
        picked = [r for r in rows if low <= r["scale"] < high]
        share = len(picked) / max(len(rows), 1)
        out[f"{low}-{high}"] = summarise(picked, round(canvases * share), round(false * share))
    return out


def identification_accuracy(features: np.ndarray, records: Sequence, found: np.ndarray,
                            *, seed: int) -> Dict:
    """Source-disjoint 1-NN accuracy under the ``split`` protocol (as evaluate.py), with
    the faces not found counting as wrong probes and missing from the gallery."""
    from bt_jax.evaluation import protocols
    from bt_jax.evaluation.features import FeatureTable
    from bt_jax.evaluation.identification import Identification

    assignment = protocols.split(records, seed=seed)
    table = FeatureTable([r.path for r in records], np.where(found[:, None], features, 0.0))
    result = Identification(assignment, search="sklearn").evaluate(table)
    position = {r.path: i for i, r in enumerate(records)}
    probe_found = np.asarray([found[position[r.path]] for r in assignment.probes])
    hit = result.correct & probe_found
    mask = result.view("source_disjoint")
    ids = result.probe_identities[mask]
    ci = bootstrap_ci(hit[mask], ids, samples=1000, seed=0)
    return {"probes": int(mask.sum()), "accuracy": float(hit[mask].mean()),
            "ci95": list(ci) if ci else None, "hits": hit[mask], "found": probe_found[mask]}


def crop_shift(landmarks: np.ndarray, size: int, align_from: str) -> Dict[str, float]:
    """What re-aligning an aligned crop from ``landmarks`` found on it does: the mean
    distance (crop pixels) each pixel moves, and the similarity's scale and angle (0 px,
    1, 0 degrees for landmarks exactly on the template)."""
    tform = similarity(landmarks, size, align_from)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
    moved = np.linalg.norm(tform(grid.astype(np.float64)) - grid, axis=1).mean()
    return {"shift": float(moved), "scale": float(tform.scale),
            "angle": float(np.degrees(tform.rotation))}


def alignment_shifts_by_kind(found: Dict[str, Sequence[Optional[np.ndarray]]],
                             kinds: Sequence[str], size: int) -> Dict[str, Dict]:
    """{kind: {way of finding landmarks: alignment_shifts()}} for every kind in ``kinds``
    and for all crops ('all'); ``found`` holds each way's landmarks in crop order."""
    return {kind: {name: alignment_shifts([m for m, k in zip(marks, kinds)
                                           if kind in ("all", k)], size)
                   for name, marks in found.items()}
            for kind in sorted(set(kinds) | {"all"})}


def alignment_shifts(landmarks: Sequence[Optional[np.ndarray]], size: int) -> Dict[str, Dict]:
    """crop_shift() summarised over crops (None: no face found), per way of aligning."""
    found = [m for m in landmarks if m is not None]
    out = {}
    for how in ALIGN_FROM:
        rows = [crop_shift(m, size, how) for m in found]
        shift = np.array([r["shift"] for r in rows])
        scale = np.array([r["scale"] for r in rows])
        out[how] = {"crops": len(found), "shift_mean": float(shift.mean()),
                    "shift_median": float(np.median(shift)),
                    "shift_p90": float(np.percentile(shift, 90)),
                    "scale_mean": float(scale.mean()), "scale_sd": float(scale.std()),
                    "angle_sd": float(np.std([r["angle"] for r in rows]))}
    return out
