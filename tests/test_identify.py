"""Enrol and identify: classifiers and thresholds on embeddings with known answers, the
gallery file, and the script end to end on synthetic faces."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bt_jax.identify.crops import read_crops
from bt_jax.identify.gallery import (UNKNOWN, Classifier, Gallery, calibrate, holdout_people,
                                     identify, threshold_for)
from conftest import tiny_flags

REPO = Path(__file__).resolve().parents[1]
PRE = {"image_size": 32, "crop_size": 32}


def _gallery(rows, names, fingerprint="f" * 32):
    return Gallery(np.asarray(rows, np.float32), list(names),
                   [f"/g/{i}.png" for i in range(len(names))], fingerprint, PRE)


def test_one_nn_names_the_nearest_person_and_says_unknown_below_the_threshold():
    g = _gallery([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], ["ann", "ann", "bob"])
    queries = np.asarray([[0.8, 0.6, 0], [0, 0.1, 1], [0, 1, 0]], np.float32)
    answers = identify(g, queries, Classifier("1nn"), top_k=2, threshold=0.7)
    assert [a.decision for a in answers] == ["ann", "bob", UNKNOWN]
    assert answers[0].identities == ["ann", "bob"]
    assert answers[0].similarities[0] == pytest.approx(1.0)
    assert answers[2].similarities[0] == pytest.approx(0.6)  # ann's second photo


def test_distance_weighted_knn_outvotes_a_single_nearest_photo():
    # The query is closest to one photo of bob (2.0 degrees away), but two photos of ann
    # are almost as close (2.1 degrees): their weights add up.
    def at(degrees):
        return [np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))]
    g = _gallery([at(2.1), at(-2.1), at(2.0), at(180)], ["ann", "ann", "bob", "cy"])
    query = np.asarray([at(0)], np.float32)
    one = identify(g, query, Classifier("1nn"))[0]
    knn = identify(g, query, Classifier("knn", k=3))[0]
    assert one.decision == "bob" and knn.decision == "ann"
    assert knn.similarities[0] < one.similarities[0]  # ann's best photo, not the nearest


def test_linear_svm_separates_clusters_and_reports_cosine_similarity():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8, dtype=np.float32)
    rows = np.concatenate([c + 0.05 * rng.standard_normal((3, 8)) for c in centres])
    g = _gallery(rows, [n for n in "abcd" for _ in range(3)])
    queries = centres + 0.05 * rng.standard_normal((4, 8)).astype(np.float32)
    answers = identify(g, queries, Classifier("svm"))
    assert [a.decision for a in answers] == list("abcd")
    assert all(0.9 < a.similarities[0] <= 1.0 for a in answers)
    with pytest.raises(ValueError, match="unknown"):
        Classifier("forest")


def test_threshold_lets_through_exactly_the_allowed_share_of_strangers():
    scores = np.asarray([0.9, 0.5, 0.3, 0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 0.35])
    t = threshold_for(scores, 0.2)  # 2 of 10 may pass
    assert np.sum(scores >= t) == 2 and 0.7 < t <= 0.8
    assert np.sum(scores >= threshold_for(scores, 0.01)) == 0
    g = _gallery([[1, 0], [0, 1]], ["a", "b"])
    c = calibrate(g, np.asarray([[1, 1], [1, 0.1]]), Classifier("1nn"), (0.5,))
    assert c["strangers"] == 2 and c["gallery_people"] == 2 and c["resolution"] == 0.5


def test_gallery_file_round_trip_and_refusals(tmp_path):
    g = _gallery([[1, 0], [0, 1]], ["a", "b"])
    g.calibration = {"thresholds": {"0.01": 0.5}}
    path = g.save(str(tmp_path / "g.npz"))
    back = Gallery.load(path)
    assert back.identities == ["a", "b"] and back.calibration == g.calibration
    np.testing.assert_array_equal(back.embeddings, g.embeddings)
    (tmp_path / "not.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a gallery"):
        Gallery.load(str(tmp_path / "not.npz"))
    with pytest.raises(FileNotFoundError, match="identify.py enrol"):
        Gallery.load(str(tmp_path / "missing.npz"))


def test_crops_of_another_size_or_unreadable_are_refused_by_name(tmp_path):
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "ok.png")
    Image.new("RGB", (640, 480)).save(tmp_path / "photo.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"no image")
    paths = [str(tmp_path / n) for n in ("ok.png", "photo.jpg", "broken.jpg")]
    images, kept, skipped = read_crops(paths, 32, 16)
    assert images.shape == (1, 16, 16, 3) and kept == [0]
    assert "640x480, not an aligned 32x32 face crop" in skipped[paths[1]]
    assert "cannot read image" in skipped[paths[2]]


def test_held_out_strangers_are_seeded_and_leave_someone_to_enrol():
    people = [f"p{i}" for i in range(8)]
    assert holdout_people(people, 0.25, 0) == holdout_people(people, 0.25, 0)
    assert len(holdout_people(people, 0.25, 0)) == 2
    assert holdout_people(people, 0.0, 0) == set()
    with pytest.raises(ValueError, match="leaves nobody"):
        holdout_people(["a"], 0.5, 0)


# ------------------------------------------------------------------ the script


@pytest.fixture(scope="module")
def people(synthetic_faces):
    return Path(synthetic_faces("people", num_identities=10, sources_per_identity=2,
                                masked_variants=1, image_size=32))


def _identify(command, *args, config=True):
    model = ["--config", "configs/synthetic.py", *tiny_flags(), "--init", "scratch"]
    return subprocess.run([sys.executable, "scripts/identify.py", command,
                           *(model if config else []), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_enrol_query_add_and_refusals_end_to_end(people, tmp_path):
    enrol_dir, later = tmp_path / "enrol", tmp_path / "later"
    names = sorted(p.name for p in people.iterdir() if p.is_dir())
    for i, name in enumerate(names):
        shutil.copytree(people / name, (enrol_dir if i < 8 else later) / name)
    gallery = tmp_path / "g.npz"
    done = _identify("enrol", "--images", str(enrol_dir), "--out", str(gallery),
                     "--config.identify.holdout_fraction=0.25")
    assert done.returncode == 0, done.stderr[-2000:]
    g = Gallery.load(str(gallery))
    assert len(g.people) == 6 and g.calibration["strangers"] > 0  # 2 of 8 held out
    assert "held out 2 new people" in done.stdout

    queries = tmp_path / "queries"
    shutil.copytree(people / names[0], queries)
    Image.new("RGB", (200, 100)).save(queries / "whole_photo.jpg")
    asked = _identify("query", "--gallery", str(gallery), str(queries), "--out",
                      str(tmp_path / "answers"), config=False)  # the model from the gallery
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "not an aligned 32x32 face crop" in asked.stderr
    rows = json.loads((tmp_path / "answers.json").read_text())["rows"]
    firsts = [r for r in rows if r["rank"] == 1]
    assert len(firsts) == len(list((people / names[0]).iterdir()))
    assert all(r["decision"] in g.people + [UNKNOWN] for r in firsts)
    assert (tmp_path / "answers.csv").read_text().startswith("image,decision,rank")

    added = _identify("enrol", "--images", str(later), "--out", str(gallery), "--add")
    assert added.returncode == 0, added.stderr[-2000:]
    assert Gallery.load(str(gallery)).people == sorted(set(g.people) | set(names[8:]))

    other = _identify("query", "--gallery", str(gallery), str(queries),
                      "--config.seed=1")  # another untrained network
    assert other.returncode == 1 and "another model or preprocessing" in other.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (200, 100)).save(photos / "whole_photo.jpg")
    refused = _identify("query", "--gallery", str(gallery), str(photos), config=False)
    assert refused.returncode == 1 and "none of the 1 images could be answered" in refused.stderr
    again = _identify("enrol", "--images", str(later), "--out", str(gallery))
    assert again.returncode == 1 and "pass --add" in again.stderr
    assert _identify("name", config=False).returncode != 0


@pytest.mark.slow
def test_query_runs_from_an_exported_embedder_alone(people, tmp_path):
    """A gallery enrolled with the network is queried with the exported artifact: the same
    fingerprint, the same answers."""
    export = subprocess.run([sys.executable, "scripts/export.py", "--config",
                             "configs/synthetic.py", *tiny_flags(), "--init", "scratch",
                             "--out", str(tmp_path / "embedder"), "--platforms", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    gallery = tmp_path / "g.npz"
    assert _identify("enrol", "--images", str(people), "--out", str(gallery)).returncode == 0
    answers = {}
    for name, extra in (("network", []), ("exported", ["--exported", str(tmp_path / "embedder")])):
        done = _identify("query", "--gallery", str(gallery), str(people), "--out",
                         str(tmp_path / name), *extra, config=False)
        assert done.returncode == 0, done.stderr[-2000:]
        answers[name] = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
    assert [r["identity"] for r in answers["network"]] == \
        [r["identity"] for r in answers["exported"]]
    np.testing.assert_allclose([r["similarity"] for r in answers["network"]],
                               [r["similarity"] for r in answers["exported"]], atol=1e-5)
