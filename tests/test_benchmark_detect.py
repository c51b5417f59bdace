"""bt_jax/benchmark/detect.py's bookkeeping (with a stand-in detector and embedder) and
scripts/compare_mtcnn_package.py's comparison (pure numpy). Timing itself is not tested,
nor the mtcnn package (it needs TensorFlow)."""

import importlib.util
import os

import numpy as np

from bt_jax.benchmark import detect as bench
from bt_jax.identify.align import template
from bt_jax.identify.detect import Faces

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compare_module():
    path = os.path.join(REPO, "scripts", "compare_mtcnn_package.py")
    spec = importlib.util.spec_from_file_location("compare_mtcnn_package", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _face(x, y, scale=1.0):
    marks = template(112) * scale + [x, y]
    return np.array([x, y, x + 112 * scale, y + 112 * scale]), marks


def test_measure_times_each_step_and_the_record_counts_faces_and_padding():
    photos = bench.astronaut_photos(3)
    assert len(photos) == 3 and all(p.shape == (480, 640, 3) and p.dtype == np.uint8
                                    for p in photos)
    box, marks = _face(100, 100)
    calls = []

    def detector(photo):
        return Faces(box[None], np.ones(1), marks[None])

    def embedder(images):
        calls.append(images.shape)
        return np.zeros((len(images), 4), np.float32)

    times = bench.measure(detector, embedder, photos, 112, 160, rounds=2)
    assert times["faces"] == 3 and all(times[k] >= 0 for k in
                                       ("detect_s", "align_s", "embed_s", "end_to_end_s"))
    assert set(calls) == {(3, 160, 160, 3)}
    record = bench.report(times, 3, 64, {"seconds": 2 * times["detect_s"]}, source="test",
                          embedder="stand-in")
    assert record["faces_per_photo"] == 1.0
    assert record["embed_padded_share"] == round(1 - 3 / 64, 3)
    assert record["package_over_ours_detect_time"] == 2.0
    table = bench.markdown(record)
    assert "| detect + align + embed |" in table and "`mtcnn` 1.0.0" in table


def test_comparison_of_identical_detections_and_of_a_missed_face():
    compare = _compare_module()
    (b1, m1), (b2, m2) = _face(50, 60), _face(300, 200, 1.5)
    canvas = {"file": "c.png",
              "faces": [{"item": 0, "scale": 1.0, "landmarks": m1.tolist()},
                        {"item": 1, "scale": 1.5, "landmarks": m2.tolist()}],
              "detected": {"boxes": [b1.tolist(), b2.tolist()], "scores": [0.9, 0.8],
                           "landmarks": [m1.tolist(), m2.tolist()]}}
    shifted = m1 + [2.0, 0.0]
    package = {"c.png": {"boxes": [(b1 + [2, 0, 2, 0]).tolist()], "scores": [0.95],
                         "landmarks": [shifted.tolist()]}}
    result = compare.compare([canvas], package, {0: "masked", 1: "unmasked"})
    assert result["counts"] == {"canvases": 1, "ours_boxes": 2, "package_boxes": 1}
    assert result["matched_pairs"] == 1 and result["only_ours_boxes"] == 1
    assert result["only_package_boxes"] == 0
    assert 0.9 < result["iou"]["mean"] < 1.0
    iod = np.linalg.norm(m1[1] - m1[0])
    assert np.isclose(result["landmark_diff_over_true_iod"]["mean"], 2.0 / iod)
    rows = result["truth"]
    assert rows["all faces"]["ours_rate"] == 1.0 and rows["all faces"]["package_rate"] == 0.5
    assert rows["all faces"]["only_ours"] == 1 and rows["unmasked"]["package_rate"] == 0.0
    assert rows["masked"]["ours_nme"]["mean"] == 0.0
    assert np.isclose(rows["masked"]["package_nme"]["mean"], 2.0 / iod)
    assert "| all faces | 2 | 100.0% | 50.0% |" in compare.table(result)
