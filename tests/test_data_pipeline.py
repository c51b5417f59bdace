"""Sources (folder, MLFW release, TFDS), pair samplers, the grain pipeline, cleaning and
on-device augmentation, on generated files (corrupt ones included) and on the real data."""

import itertools
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from ml_collections import config_dict
from PIL import Image

from bt_jax.runtime import parallel
from bt_jax.config import base_config
from bt_jax.data import augment, cleaning, release, sources
from bt_jax.data.exclusions import read_exclusions, record_key, write_exclusions
from bt_jax.data.folder import scan_folder
from bt_jax.data.pairs import PairDataset, PairSampler, cross_source_capacity
from bt_jax.data.pipeline import StreamingPairs

MLFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlfw"


def _no_mlfw():
    return pytest.mark.skipif(
        not (MLFW / "val").is_dir(),
        reason=f"MLFW data not found at {MLFW}: it lives outside the repository in "
               "../shared/data/mlfw (see shared/data/README.md)")


def _config(**data):
    config = base_config()
    config.data.image_size = 32
    config.train.progress = False
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def _folder_source(root, **data):
    return sources.open_split(_config(source="folder", train_dir=str(root), **data),
                              "train", "unused")


def _write_release(root, files, pairs_lines):
    (root / release.ALIGNED).mkdir(parents=True)
    for name, src in files.items():
        (root / release.ALIGNED / name).write_bytes(Path(src).read_bytes())
    (root / release.PAIRS).write_text("".join(line + "\n" for line in pairs_lines))
    return root


# ------------------------------------------------------------------ release layout


def test_release_layout_splits_by_fold_and_parses_identities(synth, tmp_path):
    files = {p.name: p for p in Path(synth).glob("*/*.jpg")}
    names = sorted({p.parent.name for p in files.values()})       # 6 identities
    # 10 lines = 10 folds of 1: identity k first appears in fold k.
    lines = [f"{n}_0001_0000.jpg {n}_0002_0001.jpg 1" for n in names]
    lines += [f"{names[0]}_0001_0000.jpg {names[1]}_0001_0000.jpg 0"] * 4
    root = _write_release(tmp_path / "mlfw", files, lines)
    train = release.release_split_records(root, "train")
    val, test = (release.release_split_records(root, s) for s in ("val", "test"))
    assert {r.identity for r in train} == set(names) and not val and not test
    assert len(train) == len(files) and all(r.masked is None for r in train)
    # names[1] fills folds 1-8, names[0] first shows in fold 9 (val), names[2] in 10 (test).
    (root / release.PAIRS).write_text("\n".join([lines[1]] * 8 + [lines[0], lines[2]]))
    folds = release.identity_folds(release.read_pairs_file(root / release.PAIRS), names)
    assert folds[names[1]] == 0 and folds[names[0]] == 8 and folds[names[2]] == 9
    val_ids = {r.identity for r in release.release_split_records(root, "val")}
    test_ids = {r.identity for r in release.release_split_records(root, "test")}
    assert names[0] in val_ids and names[2] in test_ids and not val_ids & test_ids


def test_release_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aligned.*does not exist.*pairs\.txt"):
        release.release_split_records(tmp_path, "train")
    (tmp_path / "aligned").mkdir()
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg maybe\n")
    with pytest.raises(ValueError, match=r"line 1.*<file_a> <file_b> <0\|1>"):
        release.read_pairs_file(tmp_path / "pairs.txt")
    with pytest.raises(FileNotFoundError, match="no images"):
        release.release_split_records(tmp_path, "train")


# ----------------------------------------------------------------------- samplers


def _records(spec):
    """spec: {identity: [(source, masked), ...]} -> records with dense labels."""
    from bt_jax.data.folder import ImageRecord

    return [ImageRecord(f"{name}_{i}", name, label, s, i, m)
            for label, (name, items) in enumerate(sorted(spec.items()))
            for i, (s, m) in enumerate(items)]


def test_source_aware_never_pairs_one_photo_and_prefers_masked_with_unmasked():
    records = _records({
        "a": [(1, False), (1, True), (1, True), (2, False), (2, True), (2, True)],
        "b": [(1, None), (1, None), (1, None), (2, None)],       # capacity 1
        "c": [(5, None), (5, None)]})                            # one photo: left out
    with pytest.warns(UserWarning, match=r"left out 1 of 3 identities.*one source photo"):
        sampler = PairSampler(records, seed=0, pair_sampler="source_aware")
    assert sampler.pairs_per_epoch == 3 + 1
    for epoch in range(20):
        pairs = sampler.epoch_pairs(epoch)
        assert len(pairs) == 4 and len(np.unique(pairs)) == 8
        assert all(records[i].source != records[j].source for i, j in pairs)
        a_pairs = [(records[i], records[j]) for i, j in pairs if records[i].identity == "a"]
        # Two unmasked images, four masked: both unmasked ones lead a mixed pair.
        assert sum(x.masked is False and y.masked is True for x, y in a_pairs) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = PairSampler(records, seed=0, pair_sampler="source_aware")
    np.testing.assert_array_equal(sampler.epoch_pairs(3), again.epoch_pairs(3))
    assert cross_source_capacity([3, 1]) == 1 and cross_source_capacity([2, 2, 2]) == 3


def test_same_source_pairs_two_variants_of_one_photo():
    records = _records({
        "a": [(1, False), (1, True), (1, True), (2, False), (2, True)],  # 1 + 1 pairs
        "b": [(3, None), (4, None)]})                                  # no photo twice
    sampler = PairSampler(records, seed=0, pair_sampler="same_source")
    assert sampler.pairs_per_epoch == 2
    seen = set()
    for epoch in range(10):
        pairs = sampler.epoch_pairs(epoch)
        assert len(pairs) == 2 and len(np.unique(pairs)) == 4
        assert all(records[i].source == records[j].source for i, j in pairs)
        # A masked/unmasked pair leads with the unmasked image.
        assert all(not (records[i].masked and records[j].masked is False) for i, j in pairs)
        seen |= {tuple(sorted(p)) for p in pairs.tolist()}
    assert len(seen) > 2  # the variants of photo 1 are re-paired across epochs


def test_hosts_get_disjoint_rows_of_each_global_batch(synth):
    records = scan_folder(synth)
    full = PairSampler(records, seed=1, pair_sampler="all_pairs").host_pairs(
        0, 8, process_index=0, process_count=1)
    parts = [PairSampler(records, seed=1, pair_sampler="all_pairs").host_pairs(
        0, 8, process_index=p, process_count=2) for p in range(2)]
    assert parts[0].shape == (full.shape[0], 4, 2)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        PairSampler(records, seed=1).host_pairs(0, 4, process_index=0, process_count=3)


# ---------------------------------------------------------------------- pipeline


def test_stream_matches_preloaded_batches_and_resumes_exactly(synth):
    source = _folder_source(synth)
    records, images = sources.preload(source, 32, progress=False)
    preloaded = PairDataset(records, images, seed=2, pair_sampler="source_aware",
                            process_index=0, process_count=1)
    stream = StreamingPairs(source, 32, seed=2, pair_sampler="source_aware", workers=3,
                            process_index=0, process_count=1)
    expected, got = list(preloaded.batches(1, 6)), list(stream.batches(1, 6))
    assert len(got) == stream.steps_per_epoch(6) == len(expected) == 27 // 6
    for e, g in zip(expected, got):
        assert g.shape == (1, 2, 6, 32, 32, 3) and g.dtype == np.uint8
        np.testing.assert_array_equal(g, e)
    resumed = list(stream.batches(1, 6, start_step=2))
    np.testing.assert_array_equal(resumed[0], got[2])


def test_both_loaders_feed_the_devices_one_layout_through_one_prefetch(synth):
    """Device d's slice of a batch holds pairs d*b..(d+1)*b-1 of the host batch: view 1
    at [d, 0], view 2 at [d, 1]; preloaded and streamed batches arrive identical."""
    source = _folder_source(synth)
    stream = StreamingPairs(source, 32, seed=0, pair_sampler="all_pairs",
                            process_index=0, process_count=1)
    preloaded = PairDataset(*sources.preload(source, 32, progress=False), seed=0,
                            pair_sampler="all_pairs", process_index=0, process_count=1)
    mesh = parallel.device_mesh(8)
    fed = [parallel.prefetch_to_devices(d.batches(0, 16, devices=8), mesh, 2)
           for d in (stream, preloaded)]
    pairs = stream.host_pairs(0, 16)[0]
    for got in (next(fed[0]), next(fed[1])):
        assert isinstance(got, jax.Array) and got.shape == (8, 2, 2, 32, 32, 3)
        assert len(got.sharding.device_set) == 8
        for d in range(8):
            np.testing.assert_array_equal(got[d, 0], preloaded.images[pairs[2 * d:2 * d + 2, 0]])
            np.testing.assert_array_equal(got[d, 1], preloaded.images[pairs[2 * d:2 * d + 2, 1]])


def test_device_prefetch_raises_a_loader_error_in_order_and_stops_when_closed():
    mesh = parallel.device_mesh(8)

    def batches():
        yield np.zeros((8, 1), np.float32)
        raise RuntimeError("pairs in a row were unreadable")

    fed = parallel.prefetch_to_devices(batches(), mesh, 2)
    assert next(fed).shape == (8, 1)
    with pytest.raises(RuntimeError, match="unreadable"):
        next(fed)
    endless = parallel.prefetch_to_devices(itertools.repeat(np.ones((8, 1))), mesh, 1)
    assert float(next(endless)[0, 0]) == 1.0
    endless.close()  # the producer thread stops instead of filling memory


def test_corrupt_jpeg_is_skipped_with_a_warning_and_counted(synth, tmp_path):
    import shutil

    root = Path(shutil.copytree(synth, tmp_path / "data"))
    bad = root / "Synth_00001" / "Synth_00001_0002_0001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])                  # truncated JPEG
    (root / "Synth_00002" / "Synth_00002_0001_0000.jpg").write_bytes(b"not an image")
    stream = StreamingPairs(_folder_source(root), 32, seed=0, pair_sampler="all_pairs",
                            workers=2, process_index=0, process_count=1)
    with pytest.warns(UserWarning, match="skipped unreadable image") as caught:
        for epoch in range(3):
            batches = list(stream.batches(epoch, 8))
            assert len(batches) == stream.steps_per_epoch(8)
            assert all(b.shape == (1, 2, 8, 32, 32, 3) for b in batches)
    assert len(stream.skipped) == 2 and any("0002_0001" in k for k in stream.skipped)
    assert sum("skipped unreadable" in str(w.message) for w in caught) == 2   # once a file
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable images"):
        records, images = sources.preload(_folder_source(root), 32, progress=False)
    assert len(records) == len(images) == 6 * 9 - 2


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*<identity>"):
        _folder_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no <identity>/<image>"):
        _folder_source(tmp_path / "empty")
    config = _config(source="tfds", manual_dir=str(tmp_path / "empty"),
                     tfds_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=r"empty holds neither train/ nor aligned/"):
        sources.open_split(config, "train", str(tmp_path))


# ----------------------------------------------------- exclusions and small identities


def test_exclusions_and_small_identities_give_one_summary_line(synth, tmp_path):
    excluded = tmp_path / "exclude.txt"
    keys = [f"Synth_00003/Synth_00003_{s:04d}_{v:04d}.jpg" for s in (1, 2, 3) for v in (0, 1)]
    keys.append("Synth_00000/Synth_00000_0001_0000.jpg")
    write_exclusions(excluded, [(k, "test") for k in keys])
    assert read_exclusions(excluded) == set(keys)
    with pytest.warns(UserWarning, match=r"left 1 of 6 identities.*7 excluded.*Synth_00003") as w:
        source = _folder_source(synth, exclude_file=str(excluded), min_images_per_identity=4)
    assert len(w) == 1
    assert {r.identity for r in source.records} == {f"Synth_{i:05d}" for i in (0, 1, 2, 4, 5)}
    assert [r.label for r in source.records if r.identity == "Synth_00004"][0] == 3
    assert not {record_key(r) for r in source.records} & read_exclusions(excluded)
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*clean_data\.py"):
        _folder_source(synth, exclude_file=str(tmp_path / "nope.txt"))


# --------------------------------------------------------------------------- TFDS


def _same_examples(a, b):
    assert [(r.identity, r.label, r.source, r.variant, r.masked) for r in a.records] == \
        [(r.identity, r.label, r.source, r.variant, r.masked) for r in b.records]
    assert [record_key(r) for r in a.records] == [record_key(r) for r in b.records]
    for i in range(0, len(a.records), 5):
        assert a.read(i) == b.read(i)


def test_tfds_source_yields_the_folder_examples(synth, tmp_path):
    import shutil

    manual = tmp_path / "manual"
    for split in ("train", "val"):
        shutil.copytree(synth, manual / split)
    corrupt = manual / "train" / "Synth_00004" / "Synth_00004_0003_0002.jpg"
    corrupt.write_bytes(b"\xff\xd8 broken")
    excluded = tmp_path / "x.txt"
    write_exclusions(excluded, [("Synth_00001/Synth_00001_0001_0001.jpg", "test")])
    common = dict(exclude_file=str(excluded), tfds_dir=str(tmp_path / "tfds"))
    folder = sources.open_split(_config(source="folder", train_dir=str(manual / "train"),
                                        **common), "train", str(tmp_path))
    tfds = sources.open_split(_config(source="tfds", manual_dir=str(manual), **common),
                              "train", str(tmp_path))
    _same_examples(folder, tfds)
    assert len(tfds.records) == 6 * 9 - 1 and tfds.records[5].masked is not None
    stream = StreamingPairs(tfds, 32, seed=0, pair_sampler="all_pairs", workers=2,
                            process_index=0, process_count=1)
    with pytest.warns(UserWarning, match="Synth_00004_0003_0002"):
        for _ in stream.batches(0, 8):
            pass
    assert len(stream.skipped) == 1


@_no_mlfw()
def test_real_mlfw_val_folder_and_tfds_agree_and_stream(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train").symlink_to(MLFW / "val")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # identities with a single image
        folder = sources.open_split(_config(source="folder", train_dir=str(MLFW / "val")),
                                    "train", str(tmp_path))
        tfds = sources.open_split(_config(source="tfds", manual_dir=str(manual),
                                          tfds_dir=str(tmp_path / "tfds")), "train",
                                  str(tmp_path))
        _same_examples(folder, tfds)
        stream = StreamingPairs(tfds, 112, seed=0, pair_sampler="source_aware", process_index=0,
                                process_count=1)
    assert next(stream.batches(0, 64)).shape == (1, 2, 64, 112, 112, 3)
    assert not stream.skipped
    pairs = stream.epoch_pairs(0)
    assert all(folder.records[i].source != folder.records[j].source for i, j in pairs)


# ----------------------------------------------------------------------- cleaning


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def test_cleaning_finds_duplicates_poor_and_unreadable_images(synth, tmp_path):
    ann = tmp_path / "data" / "Ann"
    faces = [np.asarray(Image.open(synth / "Synth_00000" / f"Synth_00000_{s:04d}_0000.jpg"))
             for s in (1, 2)]
    _save(ann / "Ann_0001_0000.jpg", faces[0])
    (ann / "Ann_0001_0001.jpg").write_bytes((ann / "Ann_0001_0000.jpg").read_bytes())
    _save(ann / "Ann_0002_0000.jpg", faces[1])
    # The same photo again under another source number, slightly brighter.
    _save(ann / "Ann_0003_0000.jpg", np.clip(faces[0].astype(int) + 6, 0, 255).astype(np.uint8))
    _save(ann / "Ann_0004_0000.jpg", np.full((32, 32, 3), 120, np.uint8))
    (ann / "Ann_0005_0000.jpg").write_bytes(b"\xff\xd8 truncated")
    root = ann.parent
    records = scan_folder(root, min_images_per_identity=1)
    stats = cleaning.collect_stats(records, lambda i: Path(records[i].path).read_bytes(),
                                   progress=False)
    problems = cleaning.find_problems(stats)
    kinds = {key.split("/")[1]: kind for key, (kind, _) in problems.items()}
    assert kinds == {"Ann_0001_0001.jpg": "exact duplicate", "Ann_0003_0000.jpg":
                     "near-duplicate source", "Ann_0004_0000.jpg": "near-uniform",
                     "Ann_0005_0000.jpg": "unreadable"}
    assert cleaning.summarize(problems)["exact duplicate"] == 1


# ------------------------------------------------------------------- augmentation


def _augment_cfg(**overrides):
    cfg = dict(flip=True, crop_scale=1.0, brightness=0.0, contrast=0.0, grayscale_prob=0.0,
               barlow_twins=False, mask_prob=0.0)
    return config_dict.ConfigDict({**cfg, **overrides})


def test_mask_augmentation_covers_the_lower_face_of_view_1_only(synth):
    faces = np.stack([np.asarray(Image.open(p)) for p in sorted(synth.glob("*/*_0000.jpg"))[:4]])
    cfg = _augment_cfg(flip=False, mask_prob=1.0)
    run = jax.jit(lambda x, view: augment.augment(jax.random.PRNGKey(0), x, cfg, view=view),
                  static_argnums=1)
    masked, plain = np.asarray(run(faces, 1)), np.asarray(run(faces, 0))
    np.testing.assert_allclose(plain, faces.astype(np.float32), atol=1e-3)
    changed = np.abs(masked - faces).max(-1) > 30
    assert changed[:, 20:].mean() > 0.3 and changed[:, :12].mean() < 0.05
    bank = augment.mask_bank(32)
    assert bank.shape == (augment.MASK_BANK_SIZE, 32, 32, 4) and 0 <= bank.min() <= bank.max() <= 1


def test_barlow_twins_recipe_is_random_per_key_and_resizes_on_device(synth):
    faces = np.stack([np.asarray(Image.open(p)) for p in sorted(synth.glob("*/*.jpg"))[:4]])
    cfg = _augment_cfg(barlow_twins=True, mask_prob=0.5)
    run = jax.jit(lambda k, x: augment.augment(k, x, cfg, view=1, out_size=40))
    a, b = run(jax.random.PRNGKey(1), faces), run(jax.random.PRNGKey(2), faces)
    assert a.shape == (4, 40, 40, 3) and a.dtype == np.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 255
    np.testing.assert_array_equal(a, run(jax.random.PRNGKey(1), faces))
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_crop_area_min_reaches_the_recipes_crop(synth, monkeypatch):
    faces = np.stack([np.asarray(Image.open(p)) for p in sorted(synth.glob("*/*.jpg"))[:2]])
    seen, crop = [], augment.random_resized_crop

    def spy(key, image, out_size, area, ratio):
        seen.append(area)
        return crop(key, image, out_size, area, ratio)

    monkeypatch.setattr(augment, "random_resized_crop", spy)
    for value in (0.08, 0.5):
        augment.augment(jax.random.PRNGKey(0), faces, _augment_cfg(barlow_twins=True,
                                                                   crop_area_min=value))
    assert seen == [(0.08, 1.0), (0.5, 1.0)]
    # The whole image at aspect 1 is the image itself.
    x = faces[0].astype(np.float32) / 255
    np.testing.assert_allclose(crop(jax.random.PRNGKey(3), x, x.shape[0], (1.0, 1.0), (1, 1)),
                               x, atol=1e-5)


def _hsv_hue_reference(images, turns):
    """The HSV definition of a hue shift (torchvision's adjust_hue), pixel by pixel."""
    import colorsys

    out = np.empty(images.shape, np.float64)
    for n, turn in enumerate(turns):
        for index in np.ndindex(images.shape[1:3]):
            h, s, v = colorsys.rgb_to_hsv(*images[(n, *index)].astype(np.float64))
            out[(n, *index)] = colorsys.hsv_to_rgb((h + turn) % 1.0, s, v)
    return out


# No comparison with torchvision itself: the only torchvision for torch 2.13 that pip finds
# here (0.28.0) is the CUDA 13 build, whose import fails next to the CPU torch of the test
# extra ("operator torchvision::nms does not exist"); the HSV definition above is its own.
def test_hue_shift_is_torchvisions_hsv_hue_shift():
    rng = np.random.default_rng(0)
    images = rng.random((6, 12, 12, 3), dtype=np.float32)
    # Grays, primaries and ties between the largest channels take the special branches.
    images[0, 0, :6] = [[0.5] * 3, [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.2, 0.7, 0.7]]
    images[1] = np.round(images[1] * 4) / 4
    turns = np.asarray([-0.5, -0.1, 0.0, 0.03, 0.25, 0.5], np.float32)
    ours = jax.vmap(augment.hue_shift)(images, turns)
    np.testing.assert_allclose(ours, _hsv_hue_reference(images, turns), atol=1e-5)


def test_hold_out_moves_whole_identities_reproducibly_and_relabels():
    from bt_jax.data import sources
    from bt_jax.data.folder import ImageRecord

    records = [ImageRecord(f"{n}/{n}_{i:04d}_0000.jpg", n, k, i, 0, None)
               for k, n in enumerate("abcdefghij") for i in range(3)]
    source = sources.ImageSource("train", records, lambda i: records[i].path.encode())
    kept, held = sources.hold_out(source, 0.2, seed=0)
    held_ids = {r.identity for r in held.records}
    assert len(held_ids) == 2 and not held_ids & {r.identity for r in kept.records}
    assert len(kept.records) + len(held.records) == 30
    assert sorted({r.label for r in held.records}) == [0, 1]
    assert held.read(0) == held.records[0].path.encode()  # reads follow the subset
    again = sources.hold_out(source, 0.2, seed=0)[1]
    assert [r.path for r in again.records] == [r.path for r in held.records]
    assert {r.identity for r in sources.hold_out(source, 0.2, seed=1)[1].records} != held_ids
    with pytest.raises(ValueError, match="holdout_fraction"):
        sources.hold_out(source, 1.0, seed=0)


def test_train_extra_dir_adds_variants_of_the_same_sources(synth, tmp_path):
    """A second alignment of train's crops joins as more variants of the same source
    photos: read from its own files, and never paired with its twin by source_aware."""
    originals = scan_folder(synth)
    extra = tmp_path / "realigned"
    for record in originals[:12]:  # the first identities' crops, as PNG, same names
        name = Path(record.path).with_suffix(".png").name
        (extra / record.identity).mkdir(parents=True, exist_ok=True)
        Image.open(record.path).save(extra / record.identity / name)
    (extra / "stranger").mkdir()  # not in train: left out
    Image.open(originals[0].path).save(extra / "stranger" / "stranger_0001_0000.png")
    source = _folder_source(synth, train_extra_dir=str(extra))
    added = [r for r in source.records if r.variant >= sources.EXTRA_VARIANT_OFFSET]
    assert len(source.records) == len(originals) + 12 and len(added) == 12
    assert {r.identity for r in source.records} == {r.identity for r in originals}
    twin = next(i for i, r in enumerate(source.records) if r.path.endswith(".png"))
    assert source.read(twin) == Path(source.records[twin].path).read_bytes()
    sampler = PairSampler(source.records, seed=0, pair_sampler="source_aware")
    for i, j in sampler.epoch_pairs(0):
        assert source.records[i].source != source.records[j].source
    (tmp_path / "nobody" / "x").mkdir(parents=True)
    Image.open(originals[0].path).save(tmp_path / "nobody" / "x" / "x_0001_0000.png")
    with pytest.raises(ValueError, match="none of train_dir's identities"):
        _folder_source(synth, train_extra_dir=str(tmp_path / "nobody"))
