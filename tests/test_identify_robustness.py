"""Identify under faults and bad input (issue 29): the 'unknown' threshold stays honest
across --add, a gallery is checked when opened, outputs are checked before the work,
queries stream in bounded batches, and nothing fails quietly.

A fake embedder with known answers stands in for the network: each person's crops are one
flat colour, and the embedding is the colour, centred, so people are told apart exactly.
"""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from bt_jax.evaluation.identification import Identification
from bt_jax.evaluation.protocols import Assignment
from bt_jax.identify import app
from bt_jax.identify.crops import CHUNK, embed_stream, list_enrolment, read_crop
from bt_jax.identify.gallery import Gallery, check_settings, check_threshold
from bt_jax.identify.report import check_people
from bt_jax.runtime.workdir import check_output_file
from ml_collections import config_dict

SIZE = 8
PRE = {"image_size": SIZE, "crop_size": SIZE, "normalization": "none", "embedding": "fake",
       "metric": "cosine"}


def _embed(images):
    return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32) - 127.5


FAKE = app.Embedder(_embed, "f" * 32, PRE, {"kind": "fake"})


def _colour(i):  # well apart on the sphere after centring
    return tuple(int(v) for v in np.random.default_rng(i).integers(0, 256, 3))


def _people(root, names, images=2, start=0):
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.asarray(_colour(start + k))
        for j in range(images):
            rgb = tuple(int(v) for v in np.clip(base + 3 * j, 0, 255))
            Image.new("RGB", (SIZE, SIZE), rgb).save(root / name / f"{j}.png")
    return root


def _settings(**over):
    s = config_dict.ConfigDict({"classifier": "1nn", "k": 5, "top_k": 3, "fpir": (0.01,),
                                "holdout_fraction": 0.0})
    s.update(over)
    return s


PEOPLE = [f"p{i}" for i in range(8)]


def test_add_never_enrols_strangers_and_recalibrates_on_them(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE)
    first = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.25),
                      seed=0)
    g = first.gallery
    assert len(first.held) == 2 and not set(first.held) & set(g.people)
    assert g.strangers.people == first.held and g.calibration["strangers"] == 4
    # A plain --add of the same folder and one new person: the strangers stay strangers.
    _people(folder, ["p8"], start=8)
    added = app.enrol(FAKE, str(folder), identify_config=_settings(), seed=0, existing=g)
    assert added.already == 16 and added.gallery.people == sorted(set(g.people) | {"p8"})
    assert added.gallery.strangers.people == first.held
    assert added.gallery.calibration["gallery_people"] == 7  # set again for the new size
    # --add with a holdout picks strangers among new people only: an enrolled person's
    # own photo still answers with their name, never 'unknown'.
    _people(folder, ["p9", "p10"], start=9)
    again = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.5),
                      seed=0, existing=added.gallery)
    assert set(again.held) < {"p9", "p10"} and len(again.held) == 1
    own = app.query(FAKE, again.gallery, [str(folder / "p8" / "0.png")],
                    identify_config=_settings())
    assert own.rows[0]["decision"] == "p8" and own.threshold < 1.0


def test_the_same_files_through_a_symlink_or_as_a_copy_are_enrolled_once(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE[:3])
    g = app.enrol(FAKE, str(folder), identify_config=_settings(), seed=0).gallery
    os.symlink(folder, tmp_path / "link")
    via_link = app.enrol(FAKE, str(tmp_path / "link"), identify_config=_settings(), seed=0,
                         existing=g)
    assert via_link.already == 6 and len(via_link.gallery.files) == 6
    more = _people(tmp_path / "more", ["p0"])  # the same bytes under another path
    _people(more, ["p3"], start=3)
    done = app.enrol(FAKE, str(more), identify_config=_settings(), seed=0, existing=g)
    assert len(done.gallery.files) == 8  # p3's two images; p0's copies skipped
    assert len(done.skipped) == 2
    assert all("already in the gallery" in why for why in done.skipped.values())


def test_strangers_without_a_readable_image_give_no_threshold_rather_than_minus_inf(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE[:4], images=1)
    held = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.25),
                     seed=0).held
    for f in (folder / held[0]).iterdir():
        f.write_bytes(b"")
    done = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.25),
                     seed=0)
    assert done.gallery.calibration == {} and "0 bytes" in next(iter(done.skipped.values()))
    answers = app.query(FAKE, done.gallery, [str(folder / done.gallery.people[0] / "0.png")],
                        identify_config=_settings())
    assert answers.threshold is None and "no 'unknown' threshold" in answers.how


def test_any_fpir_in_range_works_at_query_time_and_others_are_refused(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE)
    g = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.25),
                  seed=0).gallery
    probe = [str(folder / g.people[0] / "1.png")]
    for fpir in (0.2, 0.5):  # not the enrol's 0.01: set again from the stored strangers
        done = app.query(FAKE, g, probe, identify_config=_settings(fpir=(fpir,)))
        assert f"FPIR {fpir}" in done.how and done.rows[0]["decision"] == g.people[0]
    for bad in ((-0.1,), (1.5,), (0.0,), ()):
        with pytest.raises(ValueError, match="config.identify.fpir"):
            check_settings(_settings(fpir=bad))


@pytest.mark.parametrize("field,value", [("top_k", 0), ("k", 0), ("k", -1),
                                         ("classifier", "forest"),
                                         ("holdout_fraction", 1.0)])
def test_identify_settings_are_checked_by_name(field, value):
    with pytest.raises(ValueError, match=f"config.identify.{field}"):
        check_settings(_settings(**{field: value}))


def test_a_nan_or_out_of_range_threshold_is_refused():
    for bad in (float("nan"), float("inf"), 1.5, -2.0):
        with pytest.raises(ValueError, match="--threshold"):
            check_threshold(bad)
    check_threshold(0.3)


# ------------------------------------------------------------------ the gallery file


def _saved(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE[:4])
    g = app.enrol(FAKE, str(folder), identify_config=_settings(holdout_fraction=0.25),
                  seed=0).gallery
    return g.save(str(tmp_path / "g.npz"))


def _rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def _meta(path):
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


@pytest.mark.parametrize("damage,expected", [
    ("truncated", "truncated, or another file"),
    ("no_fingerprint", "meta field 'fingerprint'"),
    ("meta_list", "meta is a JSON list"),
    ("wide", r"shape \(6, 5\) \(float32\) are not \(N, 3\) floats"),
    ("flat", r"shape \(18,\) \(float32\) are not \(N, 3\) floats"),
    ("nan", "embedding row 1"),
    ("short_names", "must be 6 strings"),
])
def test_a_damaged_gallery_is_one_line_naming_the_file(tmp_path, damage, expected):
    path = _saved(tmp_path)
    with np.load(path) as data:
        x = data["embeddings"].copy()
    meta = _meta(path)
    if damage == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "no_fingerprint":
        del meta["fingerprint"]
        _rewrite(path, meta=np.asarray(json.dumps(meta)))
    elif damage == "meta_list":
        _rewrite(path, meta=np.asarray(json.dumps([meta])))
    elif damage == "wide":
        _rewrite(path, embeddings=np.ones((len(x), 5), np.float32))
    elif damage == "flat":
        _rewrite(path, embeddings=x.ravel())
    elif damage == "nan":
        x[1, 0] = np.nan
        _rewrite(path, embeddings=x)
    elif damage == "short_names":
        with np.load(path) as data:
            _rewrite(path, identities=data["identities"][:-1])
    with pytest.raises(ValueError, match=expected) as error:
        Gallery.load(path)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_a_person_called_unknown_is_refused(tmp_path):
    folder = _people(tmp_path / "people", ["ann", "Unknown"])
    with pytest.raises(ValueError, match="may not be called 'unknown'"):
        list_enrolment(str(folder))


def test_names_that_read_as_formulas_are_written_as_text(tmp_path):
    rows = [{"image": "=1+1.png", "decision": "=HYPERLINK(\"x\")", "rank": 1,
             "identity": "@SUM(A1)", "similarity": -0.5}]
    app.write_rows(rows, str(tmp_path / "a"), {})
    text = (tmp_path / "a.csv").read_text()
    assert "'=HYPERLINK" in text and "'@SUM" in text and "'=1+1.png" in text
    assert ",-0.5" in text  # numbers stay numbers
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["identity"] == "@SUM(A1)"


# ------------------------------------------------------------------ outputs, disk, memory


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for path, why in ((tmp_path / "file" / "g.npz", "lies under a file"),
                      (tmp_path / "dir", "is a folder"), ("", "is empty")):
        with pytest.raises(ValueError, match=why):
            check_output_file(str(path), "--out")
    made = check_output_file(str(tmp_path / "new" / "g.npz"), "--out")
    assert os.path.isdir(os.path.dirname(made))  # a missing folder is made


def test_a_full_disk_keeps_the_gallery_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = open(path, "rb").read()

    def full(file, **arrays):
        open(file, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(ValueError, match="No space left on device; the gallery on disk is "
                                         "unchanged"):
        Gallery.load(path).save(path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["g.npz", "people"]


def test_queries_are_embedded_in_bounded_batches(tmp_path):
    folder = _people(tmp_path / "people", PEOPLE[:5], images=5)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    sizes = []

    def counting(images):
        sizes.append(len(images))
        return _embed(images)
    skipped = {}
    batches = list(embed_stream(counting, paths, PRE, skipped, dedupe=False, chunk=4))
    assert max(sizes) == 4 and sum(sizes) == 25 and not skipped
    assert [p for b in batches for p in b.paths] == paths
    g = app.enrol(FAKE, str(folder), identify_config=_settings(), seed=0).gallery
    big = app.Embedder(counting, FAKE.fingerprint, PRE, {})
    sizes.clear()
    app.query(big, g, paths, identify_config=_settings())
    assert max(sizes) <= CHUNK and sum(sizes) == 25


# ------------------------------------------------------------------ no quiet failures


def test_an_empty_image_file_says_zero_bytes(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"the file is empty \(0 bytes\)"):
        read_crop(str(tmp_path / "e.png"), SIZE, SIZE)


def _records(people, sources):
    from bt_jax.data.folder import ImageRecord

    return [ImageRecord(f"/x/{p}_{s}.png", p, i, s, 0, None)
            for i, p in enumerate(people) for s in range(sources)]


def test_report_needs_people_with_a_gallery_photo_and_a_probe():
    with pytest.raises(ValueError, match="at least 4 people .* 0 of 5 do"):
        check_people(_records([f"p{i}" for i in range(5)], 1), "val")
    with pytest.raises(ValueError, match="1 of 1 do"):
        check_people(_records(["solo"], 3), "val")


def test_evaluation_without_any_probe_says_so():
    records = _records(["a", "b"], 1)
    with pytest.raises(ValueError, match="no probes at all"):
        Identification(Assignment("first_source", records, [], {})).evaluate(None)


def test_identify_refuses_a_run_of_another_model_before_loading_it(tmp_path, tiny):
    from bt_jax.runtime import run_config

    run_config.save(tiny, str(tmp_path))
    other = tiny.copy_and_resolve_references()
    other.model.projector = "64-64"
    with pytest.raises(ValueError, match="model.projector"):
        app.network_embedder(other, workdir=str(tmp_path))
