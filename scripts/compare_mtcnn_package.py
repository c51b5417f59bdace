"""Our MTCNN against the ``mtcnn`` package (1.0.0, TensorFlow) on the study's composites.

Run once, not in CI, with a Python that has TensorFlow and ``mtcnn==1.0.0`` (not bt_jax:
this script imports only numpy, Pillow, json and, to detect, the package):

  <venv>/bin/python scripts/compare_mtcnn_package.py --canvases canvases/ \
      [--kinds kinds.txt] [--out canvases/package.json] [--reuse]
  <venv>/bin/python scripts/compare_mtcnn_package.py --time_photos DIR --rounds 3

(the second: scripts/benchmark_detect.py --package_python times the package this way).

--canvases is a folder written by ``scripts/detection_study.py --save_canvases``:
canvas_*.png and truth.json (per canvas the true landmarks of its faces and OUR
detector's boxes, scores and landmarks). The package's detections (its default
thresholds, the same as ours; ``fit_to_image=False`` so that, like ours, its boxes are not
clipped to the canvas) are written to --out; --reuse reads them back instead of detecting.

Compared, pure numpy:
- boxes: each of our boxes paired with the package's box of highest IoU (greedy, one to
  one, highest IoU first); a pair with IoU > 0.5 is matched. IoU of matched pairs.
- landmarks of matched pairs: the per-point distance ours <-> package over the true
  inter-ocular distance of the true face the pair covers (the one whose landmark centre
  is nearest the box centre), and over the package's own eye distance.
- against the truth, the study's rule (bt_jax/identify/study.py): a true face is found
  when a box (highest score first, one face each) holds the centre of its true landmarks
  and is 1-6 true inter-ocular distances wide; every other box is a false detection.
  Landmark error (NME) is the mean point distance over the true inter-ocular distance.
--kinds (lines ``<item> masked|unmasked``, item = the index truth.json gives) splits the
truth figures by kind; to write it for the study's canvases, in the project's venv:

  python -c "import os; from bt_jax.data.folder import scan_folder; \
r='../shared/data/mlfw/val'; k={os.path.realpath(os.path.join(r, n)): m for m, n in \
(l.split() for l in open('docs/detection_mask_labels.txt') if l.strip() and l[0] != '#')}; \
[print(i, k[os.path.realpath(x.path)]) for i, x in enumerate(scan_folder(r, \
min_images_per_identity=1)) if os.path.realpath(x.path) in k]" > kinds.txt
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

SCALE_BINS = ((0.5, 1.0), (1.0, 2.0001))


# ----------------------------------------------------------------------------------------
# the package


def package_detect(folder, truth, out_path):
    """{file: {"boxes" (n,4) x1y1x2y2, "scores", "landmarks" (n,5,2), "seconds"}}, the
    package's float coordinates (its JSON output rounds to whole pixels): the rows of
    output_type="numpy" are [image, x1, y1, x2, y2, score, x of the five points, y of them]
    (mtcnn/utils/landmarks.py parse_landmarks), the points in the order left eye, right
    eye, nose, mouth left, mouth right."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mtcnn  # the package; only here, so --reuse needs no TensorFlow

    detector = mtcnn.MTCNN()
    found = {}
    for n, canvas in enumerate(truth):
        image = np.asarray(Image.open(os.path.join(folder, canvas["file"])).convert("RGB"))
        start = time.perf_counter()
        rows = detector.detect_faces(image, box_format="xyxy", fit_to_image=False,
                                     output_type="numpy")
        seconds = time.perf_counter() - start
        rows = np.asarray(rows, np.float64).reshape(-1, 16)
        rows = rows[np.argsort(-rows[:, 5], kind="stable")]
        found[canvas["file"]] = {"boxes": rows[:, 1:5].tolist(), "scores": rows[:, 5].tolist(),
                                 "landmarks": np.stack([rows[:, 6:11], rows[:, 11:16]],
                                                       axis=2).tolist(),
                                 "seconds": seconds}
        if (n + 1) % 25 == 0:
            print(f"package: {n + 1}/{len(truth)} canvases", file=sys.stderr)
    with open(out_path, "w") as f:
        json.dump(found, f)
    return found


def package_time(folder, rounds):
    """Median seconds of a pass of the package's detector over every PNG of ``folder``
    (read first, untimed) after an untimed pass; for scripts/benchmark_detect.py."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mtcnn

    detector = mtcnn.MTCNN()
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    images = [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]
    faces = [len(detector.detect_faces(image)) for image in images]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for image in images:
            detector.detect_faces(image)
        times.append(time.perf_counter() - start)
    return {"photos": len(images), "faces": int(sum(faces)),
            "seconds": float(np.median(times)), "rounds": rounds}


# ----------------------------------------------------------------------------------------
# comparison (pure numpy)


def as_arrays(d):
    return (np.asarray(d["boxes"], float).reshape(-1, 4), np.asarray(d["scores"], float),
            np.asarray(d["landmarks"], float).reshape(-1, 5, 2))


def iou_matrix(a, b):
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def pair_boxes(ours, theirs):
    """[(i, j, iou)]: greedy one-to-one pairs, highest IoU first, IoU > 0."""
    if not len(ours) or not len(theirs):
        return []
    iou = iou_matrix(ours, theirs)
    pairs, used_i, used_j = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] <= 0:
            break
        if i not in used_i and j not in used_j:
            pairs.append((int(i), int(j), float(iou[i, j])))
            used_i.add(i)
            used_j.add(j)
    return pairs


def inter_ocular(points):
    return float(np.linalg.norm(points[1] - points[0]))


def match_truth(truth, boxes, scores):
    """For each true landmark set, the index of its box or -1 (bt_jax/identify/study.py)."""
    owner = [-1] * len(truth)
    for d in np.argsort(-scores, kind="stable"):
        x1, y1, x2, y2 = boxes[d]
        for t, points in enumerate(truth):
            cx, cy = points.mean(0)
            iod = inter_ocular(points)
            if (owner[t] < 0 and x1 <= cx <= x2 and y1 <= cy <= y2
                    and iod <= x2 - x1 <= 6 * iod):
                owner[t] = int(d)
                break
    return owner


def nearest_truth(box, truth):
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return int(np.argmin([np.linalg.norm(t.mean(0) - centre) for t in truth]))


def _stats(values):
    v = np.asarray(values, float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "min": float(v.min()), "max": float(v.max())}


def compare(truth_list, package, kinds=None):
    counts = {"canvases": 0, "ours_boxes": 0, "package_boxes": 0}
    ious, point_true, point_own, face_true = [], [], [], []
    only_ours_boxes = only_package_boxes = 0
    faces = []  # per true face: kind, scale, found by ours/package, nme of each
    false = {"ours": 0, "package": 0}
    seconds = []
    for canvas in truth_list:
        counts["canvases"] += 1
        truth = [np.asarray(f["landmarks"], float) for f in canvas["faces"]]
        ob, os_, ol = as_arrays(canvas["detected"])
        pk = package[canvas["file"]]
        seconds.append(pk.get("seconds", np.nan))
        pb, ps, pl = as_arrays(pk)
        counts["ours_boxes"] += len(ob)
        counts["package_boxes"] += len(pb)
        matched = [(i, j, v) for i, j, v in pair_boxes(ob, pb) if v > 0.5]
        only_ours_boxes += len(ob) - len(matched)
        only_package_boxes += len(pb) - len(matched)
        for i, j, v in matched:
            ious.append(v)
            dist = np.linalg.norm(ol[i] - pl[j], axis=1)
            if truth:
                iod = inter_ocular(truth[nearest_truth(ob[i], truth)])
                point_true.extend(dist / iod)
                face_true.append(dist.mean() / iod)
            point_own.extend(dist / max(inter_ocular(pl[j]), 1e-6))
        owners = {"ours": match_truth(truth, ob, os_), "package": match_truth(truth, pb, ps)}
        marks = {"ours": ol, "package": pl}
        for name, owner in owners.items():
            false[name] += len(marks[name]) - sum(d >= 0 for d in owner)
        for t, face in enumerate(canvas["faces"]):
            row = {"item": face["item"], "scale": face["scale"],
                   "kind": (kinds or {}).get(face["item"], "all")}
            for name, owner in owners.items():
                d = owner[t]
                row[name] = d >= 0
                row[name + "_nme"] = (float(np.linalg.norm(marks[name][d] - truth[t], axis=1)
                                            .mean() / inter_ocular(truth[t])) if d >= 0
                                      else None)
            faces.append(row)

    def rates(rows):
        out = {"faces": len(rows)}
        for name in ("ours", "package"):
            found = [r for r in rows if r[name]]
            out[name + "_rate"] = len(found) / max(len(rows), 1)
            out[name + "_nme"] = _stats([r[name + "_nme"] for r in found])
        out["only_ours"] = sum(r["ours"] and not r["package"] for r in rows)
        out["only_package"] = sum(r["package"] and not r["ours"] for r in rows)
        out["both"] = sum(r["ours"] and r["package"] for r in rows)
        out["neither"] = sum(not r["ours"] and not r["package"] for r in rows)
        return out

    groups = {"all faces": faces}
    for low, high in SCALE_BINS:
        groups[f"scale {low:g}-{high:.0f}"] = [r for r in faces if low <= r["scale"] < high]
    if kinds:
        for kind in sorted({r["kind"] for r in faces}):
            groups[kind] = [r for r in faces if r["kind"] == kind]
            for low, high in SCALE_BINS:
                groups[f"{kind} {low:g}-{high:.0f}"] = [
                    r for r in faces if r["kind"] == kind and low <= r["scale"] < high]
    seconds = np.asarray(seconds, float)
    return {"counts": counts, "matched_pairs": len(ious), "only_ours_boxes": only_ours_boxes,
            "only_package_boxes": only_package_boxes, "iou": _stats(ious),
            "landmark_diff_over_true_iod": _stats(point_true),
            "landmark_diff_face_mean_over_true_iod": _stats(face_true),
            "landmark_diff_over_package_iod": _stats(point_own),
            "false_per_canvas": {k: v / max(counts["canvases"], 1) for k, v in false.items()},
            "truth": {name: rates(rows) for name, rows in groups.items()},
            "package_seconds_per_canvas_median": (float(np.nanmedian(seconds))
                                                  if np.isfinite(seconds).any() else None)}


def table(result):
    c, iou = result["counts"], result["iou"]
    pt, po = result["landmark_diff_over_true_iod"], result["landmark_diff_over_package_iod"]
    lines = [f"canvases {c['canvases']}: boxes ours {c['ours_boxes']}, package "
             f"{c['package_boxes']}; matched pairs (IoU > 0.5) {result['matched_pairs']}; "
             f"unmatched boxes: ours {result['only_ours_boxes']}, package "
             f"{result['only_package_boxes']}"]
    if iou["n"]:
        lines.append(f"IoU of matched pairs: mean {iou['mean']:.3f}, median {iou['median']:.3f}"
                     f", min {iou['min']:.3f}")
        lines.append(f"landmarks ours vs package, per point / true IOD: mean {pt['mean']:.4f}, "
                     f"p95 {pt['p95']:.4f}, max {pt['max']:.4f}; / package's IOD: mean "
                     f"{po['mean']:.4f}, p95 {po['p95']:.4f}")
    fp = result["false_per_canvas"]
    lines.append(f"false detections per canvas: ours {fp['ours']:.3f}, package "
                 f"{fp['package']:.3f}")
    lines.append("")
    lines.append("| faces | n | found: ours | found: package | only ours | only package | "
                 "NME ours mean / p95 | NME package mean / p95 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result["truth"].items():
        def nme(s):
            return f"{s['mean']:.3f} / {s['p95']:.3f}" if s["n"] else "-"
        lines.append(f"| {name} | {r['faces']} | {100 * r['ours_rate']:.1f}% | "
                     f"{100 * r['package_rate']:.1f}% | {r['only_ours']} | {r['only_package']} "
                     f"| {nme(r['ours_nme'])} | {nme(r['package_nme'])} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canvases", help="Folder with truth.json.")
    parser.add_argument("--out", help="The package's detections (default "
                        "<canvases>/package_detections.json).")
    parser.add_argument("--reuse", action="store_true", help="Read --out, do not detect.")
    parser.add_argument("--kinds", help="Lines '<item> masked|unmasked'.")
    parser.add_argument("--limit", type=int, default=0, help="First N canvases only.")
    parser.add_argument("--summary", help="Write the comparison as JSON here too.")
    parser.add_argument("--time_photos", help="Instead: time the package's detection on "
                        "this folder's PNGs and print one JSON line.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed passes (--time_photos).")
    args = parser.parse_args()
    if args.time_photos:
        print(json.dumps(package_time(args.time_photos, args.rounds)))
        return
    if not args.canvases:
        parser.error("give --canvases (or --time_photos).")
    out = args.out or os.path.join(args.canvases, "package_detections.json")
    truth_path = os.path.join(args.canvases, "truth.json")
    if not os.path.isfile(truth_path) and not args.reuse:
        # The study writes truth.json last: detect on its canvases meanwhile, compare later
        # with --reuse.
        names = sorted(n for n in os.listdir(args.canvases) if n.endswith(".png"))
        package_detect(args.canvases, [{"file": n} for n in names[:args.limit or None]], out)
        print(f"no {truth_path} yet: the package's detections on {len(names)} canvases are "
              f"in {out}; run again with --reuse once it exists.")
        return
    with open(truth_path) as f:
        truth = json.load(f)
    if args.limit:
        truth = truth[:args.limit]
    if args.reuse:
        with open(out) as f:
            package = json.load(f)
    else:
        package = package_detect(args.canvases, truth, out)
    kinds = None
    if args.kinds:
        with open(args.kinds) as f:
            kinds = {int(a): b for a, b in (line.split() for line in f if line.strip())}
    result = compare(truth, package, kinds)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))


if __name__ == "__main__":
    main()
