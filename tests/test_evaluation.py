"""Evaluators against answers known exactly: 1-NN, protocol views and leaks, padding,
10-fold verification, bootstrap intervals, per-group accuracy, the evaluate script."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from bt_jax.network import embedding
from bt_jax.runtime import parallel
from bt_jax.train.optim import make_optimizer
from bt_jax.train.state import initial_state
from bt_jax.data import synthetic
from bt_jax.data.folder import ImageRecord, scan_folder
from bt_jax.evaluation import groups, knn, protocols, verification
from bt_jax.evaluation.features import FeatureTable, raw_pixels
from bt_jax.evaluation.identification import Identification, identification_report
from bt_jax.evaluation.stats import bootstrap_ci

REPO = Path(__file__).resolve().parents[1]
MLFW_VAL = REPO.parent / "shared" / "data" / "mlfw" / "val"


def _record(identity, source, variant=0):
    path = f"/faces/{identity}/{identity}_{source:04d}_{variant:04d}.jpg"
    return ImageRecord(path, identity, 0, source, variant, None)


# ------------------------------------------------------------------------ 1-NN search


@pytest.mark.parametrize("backend", knn.BACKENDS)
def test_nearest_neighbour_euclidean_and_cosine_differ_as_computed_by_hand(backend):
    gallery = np.asarray([[1.0, 0.0], [10.0, 1.0], [0.0, 3.0]], np.float32)
    probes = np.asarray([[9.0, 0.0], [0.1, 1.0], [-1.0, 0.2]], np.float32)
    index, distance = knn.nearest(gallery, probes, "euclidean", backend)
    np.testing.assert_array_equal(index, [1, 0, 0])
    np.testing.assert_allclose(distance, [np.sqrt(2), np.sqrt(0.81 + 1), np.sqrt(4.04)],
                               rtol=1e-5)
    index, distance = knn.nearest(gallery, probes, "cosine", backend)
    np.testing.assert_array_equal(index, [0, 2, 2])  # direction only: (9, 0) is along (1, 0)
    np.testing.assert_allclose(distance[0], 0.0, atol=1e-6)


def test_jax_search_pads_the_last_block_and_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    gallery, probes = rng.normal(size=(50, 8)), rng.normal(size=(23, 8)) + 100.0
    for metric in knn.METRICS:
        expected, _ = knn.nearest_sklearn(gallery, probes, metric)
        got, _ = knn.nearest_jax(gallery, probes, metric, block=8)  # 23 = 8 + 8 + 7
        np.testing.assert_array_equal(got, expected)


def test_empty_gallery_and_unknown_metric_name_the_fix():
    with pytest.raises(ValueError, match="gallery is empty"):
        knn.nearest(np.zeros((0, 2)), np.zeros((1, 2)), "cosine")
    with pytest.raises(ValueError, match="config.eval.metric"):
        knn.nearest(np.zeros((1, 2)), np.zeros((1, 2)), "manhattan")


# --------------------------------------------------------- identification and its views


def test_identification_views_leaks_and_unknown_identities_exactly():
    gallery = [_record("A", 1), _record("B", 1)]
    probes = [_record("A", 1, 1),   # variant of a gallery photo, matched: leaked, right
              _record("A", 2),      # another photo of A, lands on B: disjoint, wrong
              _record("B", 2),      # another photo of B, lands on B: disjoint, right
              _record("C", 1)]      # C has no gallery image: counted apart
    features = {gallery[0].path: [1, 0], gallery[1].path: [0, 1], probes[0].path: [1, 0.1],
                probes[1].path: [0.1, 1], probes[2].path: [0.2, 1], probes[3].path: [1, 0.5]}
    table = FeatureTable(list(features), np.asarray(list(features.values()), np.float32))
    assignment = protocols.Assignment("given", gallery, probes)
    result = Identification(assignment, metric="cosine", bootstrap_samples=200).evaluate(table)
    s = result.summary
    assert (s["views"]["full"]["probes"], s["views"]["full"]["correct"]) == (3, 2)
    assert (s["views"]["source_disjoint"]["probes"],
            s["views"]["source_disjoint"]["correct"]) == (2, 1)
    assert (s["views"]["leaked"]["probes"], s["views"]["leaked"]["correct"]) == (1, 1)
    assert s["accuracy"] == 0.5 and s["leaked_probes"] == 1
    assert s["unknown_identity_probes"] == 1 and s["unknown_identities"] == ["C"]
    np.testing.assert_array_equal(result.nearest, [0, 1, 1, 0])
    np.testing.assert_array_equal(result.true_nearest, [-1, 0, -1, -1])  # failures only


def test_identification_report_keeps_the_training_interface():
    records = [_record(name, s, v) for name in ("A", "B") for s in (1, 2) for v in (0, 1)]
    images = np.asarray([[r.label + (r.identity == "B") * 10.0, r.source] for r in records])
    report = identification_report(lambda x: x, images, records, "euclidean")
    assert {"accuracy", "gallery", "probes", "identities"} <= set(report)
    assert (report["gallery"], report["probes"], report["identities"]) == (4, 4, 2)
    assert report["accuracy"] == 1.0 and report["leaked_probes"] == 0
    json.dumps(report)  # train.py writes it into results.json


def test_pmapped_embedding_pads_a_partial_batch_and_drops_the_padding(tiny):
    images = np.random.default_rng(0).integers(0, 255, (13, 4, 4, 3), np.uint8)  # 13 % 16
    mesh = parallel.device_mesh(tiny.num_devices)
    offset = parallel.replicate(np.float32(1.0), mesh)
    # Per image: the mean of each channel plus the offset, a feature computable by hand.
    embed = jax.pmap(lambda off, x: x.mean(axis=(1, 2)) + off, axis_name=parallel.AXIS)
    got = embedding.compute_embeddings(embed, offset, images, tiny)
    np.testing.assert_allclose(got, images.mean(axis=(1, 2)) + 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def scratch():
    from conftest import tiny_config
    from bt_jax.network import embedder

    return embedder.load_weights(tiny_config(), init="scratch")


@pytest.mark.slow
def test_network_embedder_is_independent_of_batching(tiny, scratch):
    from bt_jax.network import embedder

    embed = embedder.NetworkEmbedder(tiny, scratch.variables, progress=False)
    images = np.random.default_rng(1).integers(0, 255, (21, 32, 32, 3), np.uint8)
    whole = embed(images)  # 16 + a padded batch of 5
    parts = np.concatenate([embed(images[:3]), embed(images[3:])])
    dim = embedding.create_model(tiny).backbone.feature_dim(tiny.data.image_size)
    assert whole.shape == (21, dim) and scratch.step is None
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-5)


_EVALUATE_WITHOUT_TRAINER = """
import sys, numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_config
from bt_jax.network import embedder
config = tiny_config()
config.reducer.name = "powersgd"
data = np.load(sys.argv[2])
loaded = embedder.load_weights(config, workdir=sys.argv[1])
got = embedder.NetworkEmbedder(config, loaded.variables, progress=False)(data["images"])
np.testing.assert_allclose(got, data["expected"], rtol=1e-5, atol=1e-6)
built = sorted(m for m in sys.modules if m.startswith("bt_jax.train"))
print("step", loaded.step, "built", built)
"""


@pytest.mark.slow
def test_evaluator_reads_a_powersgd_checkpoint_without_building_optimizer_state(
        tiny, tmp_path):
    """A checkpoint holding LARS momentum and per-device PowerSGD buffers is evaluated by
    a process that never imports the trainer, optimizer or reducers (partial restore)."""
    from bt_jax.train import reducers
    from bt_jax.runtime.checkpointing import Checkpointer
    from bt_jax.network import embedder

    with pytest.raises(FileNotFoundError, match="no checkpoints/ folder"):
        embedder.load_weights(tiny, workdir=str(tmp_path / "nothing"))
    config = tiny.copy_and_resolve_references()
    config.reducer.name = "powersgd"
    tx, _ = make_optimizer(config, 4)
    state = initial_state(config, tx, reducers.make_reducer(config))
    assert jax.tree.leaves(state.reducer_state) and jax.tree.leaves(state.opt_state)
    saved = state.replace(step=np.int32(7), params=jax.tree.map(lambda x: x + 0.01,
                                                                state.params))
    ckpt = Checkpointer(str(tmp_path / "run"))
    ckpt.save(7, saved)
    ckpt.close()
    images = np.random.default_rng(2).integers(0, 255, (5, 32, 32, 3), np.uint8)
    expected = embedder.NetworkEmbedder(config, embedding.network_variables(saved),
                                       progress=False)(images)
    np.savez(tmp_path / "data.npz", images=images, expected=expected)
    proc = subprocess.run([sys.executable, "-c", _EVALUATE_WITHOUT_TRAINER,
                           str(tmp_path / "run"), str(tmp_path / "data.npz")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "step 7 built []"


# -------------------------------------------------------------- protocols on a folder


@pytest.fixture(scope="module")
def folder(synthetic_faces):
    return synthetic_faces("faces", num_identities=20, sources_per_identity=2,
                           masked_variants=2, image_size=16)


def test_split_protocol_finds_every_same_source_probe(folder):
    records = scan_folder(folder)
    a = protocols.split(records, seed=3)
    table = FeatureTable([r.path for r in records],
                         np.random.default_rng(0).normal(size=(len(records), 4)))
    s = Identification(a, metric="euclidean").evaluate(table).summary
    # Per identity: 1 gallery image, 2 more variants of its photo, 3 of the other photo.
    assert (s["gallery"], s["probes"]) == (20, 100)
    assert s["views"]["leaked"]["probes"] == 40 and s["views"]["source_disjoint"]["probes"] == 60
    assert protocols.split(records, seed=3) == a and protocols.split(records, seed=4) != a


def test_given_protocol_counts_duplicates_as_leaks_and_unknown_identities_apart(folder,
                                                                                tmp_path):
    gallery_dir = tmp_path / "gallery"
    for image in sorted(folder.glob("*/*_0001_0000.jpg"))[:4]:  # 4 identities, 1 photo
        (gallery_dir / image.parent.name).mkdir(parents=True)
        shutil.copy(image, gallery_dir / image.parent.name / image.name)
    a = protocols.given(scan_folder(gallery_dir, min_images_per_identity=1),
                        scan_folder(folder))
    records = a.gallery + a.probes
    table = FeatureTable([r.path for r in records], np.random.default_rng(0).normal(
        size=(len(records), 4)))
    s = Identification(a).evaluate(table).summary
    assert s["views"]["leaked"]["probes"] == 12  # 3 variants of photo 1 (one the same file)
    assert s["views"]["source_disjoint"]["probes"] == 12
    assert s["unknown_identity_probes"] == 96 and len(s["unknown_identities"]) == 16


# ----------------------------------------------------------------------- verification


def test_ten_fold_verification_matches_a_hand_computation():
    # Every fold: positives 0.9, 0.8 and negatives 0.2, 0.1, but fold 0 has a negative
    # at 0.95. The best threshold on any 9 folds is 0.5, so fold 0 scores 3/4 and the rest 1.
    scores = np.tile([0.9, 0.8, 0.2, 0.1], 10)
    scores[2] = 0.95
    same = np.tile([True, True, False, False], 10)
    fold = np.repeat(np.arange(10), 4)
    got = verification.ten_fold_accuracy(scores, same, fold)
    assert got["fold_thresholds"] == pytest.approx([0.5] * 10)
    assert got["fold_accuracies"] == pytest.approx([0.75] + [1.0] * 9)
    assert got["accuracy"] == pytest.approx(0.975) and got["accuracy_std"] == pytest.approx(0.075)
    # The 0.95 negative outranks all 20 positives; the other 19 negatives none: AUC 19/20.
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(same, scores) == pytest.approx(0.95)
    assert verification.tar_at_far(scores, same, 1e-2) == (0.0, 0.95)  # no false accept
    assert verification.tar_at_far(scores, same, 0.05)[0] == 1.0  # one allowed


def test_ten_fold_threshold_is_the_best_of_all_cuts_on_random_scores():
    rng = np.random.default_rng(0)
    same = rng.random(300) < 0.5
    scores = np.round(rng.normal(same * 1.0, 1.0), 1)  # rounding makes ties
    fold = np.repeat(np.arange(10), 30)
    got = verification.ten_fold_accuracy(scores, same, fold)
    for k in range(10):
        train_s, train_y = scores[fold != k], same[fold != k]
        candidates = np.concatenate([[-np.inf], np.unique(train_s)])
        best = max(np.mean((train_s > t) == train_y) for t in candidates)
        t = got["fold_thresholds"][k]
        assert np.mean((train_s > t) == train_y) == pytest.approx(best)
        test = fold == k
        assert got["fold_accuracies"][k] == pytest.approx(np.mean((scores[test] > t) == same[test]))


def test_generated_pairs_are_source_disjoint_fold_disjoint_and_round_trip(folder, tmp_path):
    records = scan_folder(folder)
    with pytest.warns(UserWarning, match="pairs per fold"):
        pairs = verification.generate_pairs(records, seed=0, folds=5, pairs_per_fold=50)
    assert len(pairs) == 5 * 2 * 36  # 4 identities per fold, 3 x 3 cross-source pairs each
    assert verification.same_source_positives(pairs) == 0
    people = [{Path(p).parent.name for p, k in zip(pairs.first + pairs.second,
                                                     np.tile(pairs.fold, 2)) if k == f}
              for f in range(5)]
    assert all(not people[i] & people[j] for i in range(5) for j in range(i))
    verification.write_pairs(pairs, tmp_path / "pairs.txt", str(folder))
    again = verification.read_pairs(tmp_path / "pairs.txt", str(folder), folds=5)
    assert again.first == pairs.first and again.second == pairs.second
    np.testing.assert_array_equal(again.same, pairs.same)
    np.testing.assert_array_equal(again.fold, pairs.fold)


def test_lfw_and_calfw_pairs_formats_resolve_against_the_folder(tmp_path):
    for name in ("Ann_Lee_0001.jpg", "Ann_Lee_0002.jpg", "Bo_0001.jpg"):
        person = name.rsplit("_", 1)[0]
        (tmp_path / person).mkdir(exist_ok=True)
        (tmp_path / person / name).touch()
    (tmp_path / "lfw.txt").write_text("1\t1\nAnn_Lee\t1\t2\nAnn_Lee\t1\tBo\t1\n")
    (tmp_path / "calfw.txt").write_text("Ann_Lee_0001.jpg 7\nAnn_Lee_0002.jpg 7\n"
                                        "Ann_Lee_0001.jpg 0\nBo_0001.jpg 0\n")
    for file, folds in (("lfw.txt", 10), ("calfw.txt", 1)):
        pairs = verification.read_pairs(tmp_path / file, str(tmp_path), folds=folds)
        assert pairs.same.tolist() == [True, False] and pairs.fold.tolist() == [0, 0]
        assert pairs.second[1] == str(tmp_path / "Bo" / "Bo_0001.jpg")
    (tmp_path / "bad.txt").write_text("Ann_Lee_0001.jpg Nobody_0001.jpg 1\n")
    with pytest.raises(FileNotFoundError, match="point --data_dir"):
        verification.read_pairs(tmp_path / "bad.txt", str(tmp_path))


# ------------------------------------------------------------- bootstrap and groups


def test_bootstrap_interval_matches_the_normal_approximation_and_widens_for_clusters():
    correct = np.random.default_rng(0).random(2000) < 0.7
    lo, hi = bootstrap_ci(correct, seed=1)
    assert lo < correct.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 2000), rel=0.15)
    assert bootstrap_ci(correct, seed=1) == (lo, hi)  # seeded
    # 40 people whose 50 probes all succeed or all fail: 40 pieces of evidence, not 2000.
    clustered = np.repeat(np.arange(40) % 10 < 7, 50)
    c_lo, c_hi = bootstrap_ci(clustered, np.repeat(np.arange(40), 50))
    assert c_hi - c_lo > 4 * (hi - lo)
    assert bootstrap_ci([]) is None


def test_groups_report_support_empty_groups_and_warns_on_unknown_identities(tmp_path):
    gallery = [_record(p, 1) for p in "ABC"]
    probes = [_record("A", 2), _record("A", 3), _record("B", 2), _record("C", 2)]
    assignment = protocols.Assignment("given", gallery, probes)
    # A's probes land on A; B's probe lies closer to C's gallery image than to B's.
    rows = np.asarray([[1, 0], [0, 1], [0.1, 1], [1, 0], [1, 0], [0.2, 1], [0.1, 1]])
    result = Identification(assignment).evaluate(
        FeatureTable([r.path for r in gallery + probes], rows))
    csv = tmp_path / "groups.csv"
    csv.write_text("identity,group\nA,g1\nB,g1\nGhost,g2\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = groups.group_report(result, groups.read_groups(str(csv)), min_support=3)
    messages = " ".join(str(w.message) for w in caught)
    assert "not in the evaluated data" in messages and "Ghost" in messages
    assert "no group in the CSV" in messages  # C
    g1 = report["source_disjoint"]["g1"]
    assert (g1["support"], g1["identities"], g1["small_support"]) == (3, 2, False)
    assert g1["accuracy"] == pytest.approx(2 / 3)
    empty = report["source_disjoint"]["g2"]
    assert (empty["support"], empty["accuracy"], empty["small_support"]) == (0, None, True)
    assert report["source_disjoint"][groups.UNLISTED]["support"] == 1
    csv.write_text("A,g1\nA,g2\n")
    with pytest.raises(ValueError, match="'A' is in group"):
        groups.read_groups(str(csv))


# ------------------------------------------------------------------- the script


def _evaluate(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "scripts/evaluate.py", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_evaluate_script_writes_results_and_plots_and_fails_in_one_line(folder, tmp_path):
    (tmp_path / "groups.csv").write_text(f"{synthetic.identity_name(0)},x\nNobody,y\n")
    run = _evaluate("--config", "configs/synthetic.py", "--config.data.image_size=16",
                    "--raw_pixels", f"--data_dir={folder}", "--pairs=generate",
                    "--pairs_per_fold=3", f"--groups={tmp_path / 'groups.csv'}",
                    f"--out={tmp_path / 'out'}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "source-disjoint (headline)" in run.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["identification"]["views"]["leaked"]["probes"] == 40
    assert set(results["verification"]["tar_at_far"]) == {"0.001", "0.01"}
    for png in ("accuracy", "groups", "roc", "failures"):
        assert (tmp_path / "out" / f"{png}.png").stat().st_size > 0
    _check_results_table(tmp_path / "out" / "results.json", results)
    bad = _evaluate("--config", "configs/synthetic.py", "--raw_pixels",
                    f"--out={tmp_path / 'bad'}")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ValueError: --protocol=split "
                                                          "needs --data_dir")


def test_evaluate_script_prints_no_start_up_info_lines(folder, tmp_path):
    # As a user runs it: jax probes every backend (these tests pin JAX_PLATFORMS=cpu) and
    # matplotlib builds its font cache for the first plot.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")
    run = _evaluate("--config", "configs/synthetic.py", "--config.data.image_size=16",
                    "--raw_pixels", f"--data_dir={folder}", f"--out={tmp_path / 'out'}",
                    env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "matplotlib").is_dir()       # the cache was built in this run
    for noise in ("Unable to initialize backend", "generated new fontManager"):
        assert noise not in run.stderr


def _check_results_table(path, results):
    """scripts/results_table.py: one row per file, the CI cells and the ratio column."""
    def table(*args):
        return subprocess.run([sys.executable, "scripts/results_table.py", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    run = table(f"a={path}", f"b={path}", "--vs", "b")
    assert run.returncode == 0, run.stderr
    rows = [l for l in run.stdout.splitlines() if l.startswith("| a ") or l.startswith("| b ")]
    disjoint = results["identification"]["views"]["source_disjoint"]
    assert len(rows) == 2 and f"{100 * disjoint['accuracy']:.1f}% [" in rows[0]
    assert rows[0].endswith("| 1.0 |" if disjoint["accuracy"] else "| n/a |")
    bad = table(f"a={path}", "--vs", "c")
    assert bad.returncode != 0 and "names no row" in bad.stderr


@pytest.mark.skipif(not MLFW_VAL.is_dir(), reason=f"real MLFW data not found at {MLFW_VAL} "
                    "(see ../shared/data/README.md); the synthetic tests cover the logic")
def test_real_mlfw_split_leaks_and_raw_pixels_only_match_the_leaked_probes():
    from bt_jax.data.folder import load_images

    records = scan_folder(MLFW_VAL, min_images_per_identity=1)
    first = sorted({r.identity for r in records})[:80]  # a quick subset
    records = [r for r in records if r.identity in first]
    a = protocols.split(records, seed=0)
    paths = [r.path for r in a.gallery + a.probes]
    images = load_images(a.gallery + a.probes, 32, progress=False)
    s = Identification(a, metric="cosine").evaluate(FeatureTable(paths, raw_pixels(images)))
    views = s.summary["views"]
    assert views["leaked"]["probes"] > 0 and views["source_disjoint"]["probes"] > 0
    assert views["leaked"]["accuracy"] > 0.5 > views["source_disjoint"]["accuracy"]


def test_first_file_protocol_takes_each_identitys_first_file(folder):
    records = scan_folder(folder)
    a = protocols.first_file(records)
    assert [r.path.rsplit("/", 1)[1] for r in a.gallery[:2]] == [
        f"{r.identity}_0001_0000.jpg" for r in a.gallery[:2]]
    assert len(a.gallery) == 20 and len(a.probes) == len(records) - 20
    table = FeatureTable([r.path for r in records],
                         np.random.default_rng(0).normal(size=(len(records), 4)))
    s = Identification(a).evaluate(table).summary
    # The first file's two other variants leak; the second photo's three are disjoint.
    assert s["views"]["leaked"]["probes"] == 40 and s["views"]["source_disjoint"]["probes"] == 60


def test_paired_difference_counts_only_shared_view_probes_and_resamples_identities():
    from bt_jax.evaluation.stats import paired_difference

    base = {"path": list("abcdef"), "identity": ["x", "x", "y", "y", "z", "z"],
            "source_disjoint": [True, True, True, True, True, False]}
    a = {**base, "correct": [True, True, True, False, False, True]}
    b = {**base, "correct": [True, False, False, False, True, True]}
    d = paired_difference(a, b, samples=200)
    assert d["probes"] == 5 and d["difference"] == pytest.approx((0 + 1 + 1 + 0 - 1) / 5)
    lo, hi = d["ci95"]
    assert lo <= d["difference"] <= hi and lo < hi
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["ci95"] == (0.0, 0.0)
    with pytest.raises(ValueError, match="different probes"):
        paired_difference(a, {**b, "path": list("abcdeg")})
