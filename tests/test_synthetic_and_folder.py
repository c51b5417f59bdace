"""Synthetic generator, folder scanning/loading and the Barlow Twins pair sampler."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bt_jax.data import faces, masks, synthetic
from bt_jax.data.folder import ImageRecord, load_images, parse_image_name, scan_folder
from bt_jax.data.pairs import PairDataset
from conftest import SMALL

MLFW_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlfw" / "val"


@pytest.fixture(scope="module")
def synth_data(synth):
    records = scan_folder(synth)
    return records, load_images(records, 32, progress=False)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*.jpg")}


def _save(path, size=8, mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 40, 200)).save(path)


# ------------------------------------------------------------------ synthetic


def test_same_seed_gives_identical_bytes(synth, tmp_path):
    again = synthetic.write_synthetic_dataset(tmp_path / "again", **SMALL)
    assert _files(again) == _files(synth)
    assert (again / "masked.txt").read_text() == (synth / "masked.txt").read_text()
    other = synthetic.write_synthetic_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    assert _files(other).keys() == _files(synth).keys()
    assert _files(other) != _files(synth)


def test_identity_depends_only_on_seed_and_index(synth, tmp_path):
    fewer = synthetic.write_synthetic_dataset(
        tmp_path / "fewer", **{**SMALL, "num_identities": 2, "sources_per_identity": 2,
                               "masked_variants": 1})
    fewer_files, all_files = _files(fewer), _files(synth)
    assert len(fewer_files) == 2 * 2 * 2
    assert all(all_files[name] == data for name, data in fewer_files.items())


def test_layout_names_and_masked_list(synth):
    expected = {f"Synth_{i:05d}/Synth_{i:05d}_{s:04d}_{v:04d}.jpg"
                for i in range(6) for s in range(1, 4) for v in range(3)}
    assert set(_files(synth)) == expected
    masked = (synth / "masked.txt").read_text().splitlines()
    assert sorted(masked) == sorted(p for p in expected if not p.endswith("_0000.jpg"))
    with Image.open(synth / "Synth_00003" / "Synth_00003_0002_0001.jpg") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert parse_image_name("Synth_00003_0002_0001.jpg") == ("Synth_00003", 2, 1)


def test_masks_change_only_the_lower_face():
    ident, photo = faces.sample_identity(0, 7), faces.sample_photo(0, 7, 1)
    plain, masked = synthetic.render_variants(
        ident, photo, [masks.sample_mask(0, 7, 1, 1)], image_size=64)
    changed = np.abs(plain.astype(int) - masked.astype(int)).max(-1) > 30
    assert changed[40:].mean() > 0.2          # the mask covers nose and mouth ...
    assert changed[:16].mean() < 0.02         # ... and leaves forehead and hair alone


def test_first_identity_writes_disjoint_identities(synth, tmp_path):
    held_out = synthetic.write_synthetic_dataset(
        tmp_path / "held_out", **{**SMALL, "num_identities": 2, "first_identity": 6})
    names = {p.name for p in held_out.iterdir() if p.is_dir()}
    assert names == {"Synth_00006", "Synth_00007"}
    assert not names & {p.name for p in synth.iterdir() if p.is_dir()}


@pytest.mark.parametrize("bad", [dict(num_identities=0), dict(image_size=8), dict(seed=-1),
                                 dict(sources_per_identity=10000)])
def test_generator_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        synthetic.write_synthetic_dataset(tmp_path, **{**SMALL, **bad})


# --------------------------------------------------------------- scan_folder


def test_scan_parses_underscored_names_and_ignores_stray_files(tmp_path):
    for rel in ["Abdel_Aziz_Al-Hakim/Abdel_Aziz_Al-Hakim_0001_0000.jpg",
                "Abdel_Aziz_Al-Hakim/Abdel_Aziz_Al-Hakim_0002_0003.jpg",
                "Zoe_Ball/Zoe_Ball_0001_0000.jpg", "Zoe_Ball/Zoe_Ball_0001_0001.jpg"]:
        _save(tmp_path / rel)
    (tmp_path / "Zoe_Ball" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "Zoe_Ball" / "notes.txt").write_text("not an image")
    records = scan_folder(tmp_path)
    assert [(r.identity, r.label, r.source, r.variant, r.masked) for r in records] == [
        ("Abdel_Aziz_Al-Hakim", 0, 1, 0, None), ("Abdel_Aziz_Al-Hakim", 0, 2, 3, None),
        ("Zoe_Ball", 1, 1, 0, None), ("Zoe_Ball", 1, 1, 1, None)]
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in records)


def test_scan_reads_masked_flags_from_masked_list(synth_data):
    records, _ = synth_data
    assert len(records) == 6 * 3 * 3
    assert [r.identity for r in records if r.label == 4][0] == "Synth_00004"
    assert all(r.masked == (r.variant > 0) for r in records)


def test_small_identities_are_skipped_with_one_warning(tmp_path):
    for name, count in [("Ann_Lee", 2), ("Bo_Li", 1), ("Cy_Ng", 1)]:
        for v in range(count):
            _save(tmp_path / name / f"{name}_0001_{v:04d}.jpg")
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 identities.*Bo_Li, Cy_Ng") as record:
        records = scan_folder(tmp_path)
    assert len(record) == 1
    assert {r.identity for r in records} == {"Ann_Lee"} and records[0].label == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(scan_folder(tmp_path, min_images_per_identity=1)) == 4


def test_missing_or_empty_folder_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*train_dir"):
        scan_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "Some_Person").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"empty has no.*synthetic"):
        scan_folder(tmp_path / "empty")
    _save(tmp_path / "one" / "Zoe_Ball_0001_0000.jpg")
    with pytest.raises(FileNotFoundError, match="parent"):
        scan_folder(tmp_path / "one")


def test_badly_named_image_raises_naming_the_file(tmp_path):
    _save(tmp_path / "Zoe_Ball" / "Zoe_Ball_0001_0000.jpg")
    _save(tmp_path / "Zoe_Ball" / "Zoe_Ball_1.jpg")
    with pytest.raises(ValueError, match=r"Zoe_Ball_1\.jpg.*SSSS_VVVV"):
        scan_folder(tmp_path)


# --------------------------------------------------------------- load_images


def test_load_images_converts_grayscale_and_resizes(tmp_path):
    _save(tmp_path / "Ann_Lee" / "Ann_Lee_0001_0000.jpg", size=20)
    _save(tmp_path / "Ann_Lee" / "Ann_Lee_0002_0000.png", size=16, mode="L", value=90)
    records = scan_folder(tmp_path)
    images = load_images(records, 16, progress=False)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    gray = images[[r.source for r in records].index(2)]
    assert (gray == 90).all()


def test_corrupt_image_raises_naming_the_file(tmp_path):
    _save(tmp_path / "Ann_Lee" / "Ann_Lee_0001_0000.jpg")
    (tmp_path / "Ann_Lee" / "Ann_Lee_0002_0000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match="Ann_Lee_0002_0000.jpg"):
        load_images(scan_folder(tmp_path), 8, progress=False)


# ---------------------------------------------------------------- PairDataset


def _records(sources, masked, label=0):
    return [ImageRecord(f"p{label}_{i}", f"id{label}", label, s, i, m)
            for i, (s, m) in enumerate(zip(sources, masked))]


def test_pairs_are_deterministic_per_seed_and_epoch(synth_data):
    make = lambda seed: PairDataset(*synth_data, seed=seed)  # noqa: E731
    a, b = make(3), make(3)
    np.testing.assert_array_equal(a.epoch_pairs(5), b.epoch_pairs(5))
    epochs = [a.epoch_pairs(e).tolist() for e in range(4)]
    assert len({str(e) for e in epochs}) == 4
    assert make(4).epoch_pairs(5).tolist() != a.epoch_pairs(5).tolist()


@pytest.mark.parametrize("sampler", ["standard", "all_pairs"])
def test_pairs_prefer_other_sources_and_put_unmasked_first(synth_data, sampler):
    records, images = synth_data
    data = PairDataset(records, images, seed=0, pair_sampler=sampler)
    for epoch in range(3):
        pairs = data.epoch_pairs(epoch)
        first, second = [records[i] for i in pairs[:, 0]], [records[i] for i in pairs[:, 1]]
        assert all(a.label == b.label and a.source != b.source for a, b in zip(first, second))
        mixed = [a.masked != b.masked for a, b in zip(first, second)]
        assert all(a.masked is False for a, b in zip(first, second) if a.masked != b.masked)
        # 3 unmasked + 6 masked per identity: every pair, or all 3 unmasked, get mixed.
        assert sum(mixed) == (6 if sampler == "standard" else 6 * 3)
        assert len(np.unique(pairs)) == pairs.size      # no image twice in an epoch
    expected = 6 if sampler == "standard" else 6 * (9 // 2)
    assert len(pairs) == data.pairs_per_epoch == expected


def test_all_pairs_count_and_preferences_on_uneven_identities():
    records = (_records([1, 1, 2, 3], [None] * 4, 0)
               + _records([1, 1, 1, 2, 2], [True, False, True, True, True], 1)
               + _records([7], [None], 2))                  # one image: no pair
    images = np.zeros((len(records), 4, 4, 3), np.uint8)
    data = PairDataset(records, images, seed=1, pair_sampler="all_pairs")
    assert data.pairs_per_epoch == 4 // 2 + 5 // 2
    for epoch in range(10):
        pairs = data.epoch_pairs(epoch)
        assert all(records[a].source != records[b].source for a, b in pairs)
        assert all(a != b for a, b in pairs)
        # Identity 1 has one unmasked image: it leads one masked/unmasked pair.
        assert sum(records[a].masked is False and records[b].masked for a, b in pairs) == 1


def test_batches_shapes_and_exact_resume(synth_data):
    data = PairDataset(*synth_data, seed=0, pair_sampler="all_pairs")
    assert data.steps_per_epoch(5) == 24 // 5
    full = list(data.batches(2, 5))
    assert len(full) == 4
    assert all(b.shape == (1, 2, 5, 32, 32, 3) and b.dtype == np.uint8 for b in full)
    pairs = data.host_pairs(2, 5)[0]
    np.testing.assert_array_equal(full[0][0, 0], synth_data[1][pairs[:, 0]])
    np.testing.assert_array_equal(full[0][0, 1], synth_data[1][pairs[:, 1]])
    resumed = list(data.batches(2, 5, start_step=3))
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0], full[3])
    with pytest.raises(ValueError, match=r"24 pairs per epoch.*batch_size=25"):
        data.steps_per_epoch(25)


# ------------------------------------------------------------------ real data


def test_scan_real_mlfw_val():
    if not MLFW_VAL.is_dir():
        pytest.skip(f"MLFW data not found at {MLFW_VAL}: it lives outside the repository "
                    "in ../shared/data/mlfw (see shared/data/README.md)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # a few identities have a single image
        records = scan_folder(MLFW_VAL)
    identities = {r.identity for r in records}
    assert len(identities) > 0 and len(records) > 0
    assert all(Path(r.path).name.startswith(r.identity + "_") for r in records)
    assert all(r.masked is None and r.source >= 1 and r.variant >= 0 for r in records)
    images = load_images(records[:4], 112, progress=False)
    assert images.shape == (4, 112, 112, 3)
