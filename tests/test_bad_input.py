"""Bad input tried as a new user would: each test makes the real fault and checks that it
gets one clear error (or warning) naming the fix, and that no data is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bt_jax.weights import convert
from bt_jax.train import loop
from bt_jax.data import sources
from bt_jax.data import synthetic
from bt_jax.data.folder import scan_folder
from bt_jax.evaluation import protocols
from bt_jax.evaluation.features import FeatureTable
from bt_jax.evaluation.identification import Identification
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces(synthetic_faces):
    return synthetic_faces("faces", num_identities=6, sources_per_identity=2,
                           masked_variants=1, image_size=16)


def _evaluate(*args):
    return subprocess.run([sys.executable, "scripts/evaluate.py", "--config",
                           "configs/synthetic.py", "--config.data.image_size=16", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=180)


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def _table(records):
    return FeatureTable([r.path for r in records],
                        np.random.default_rng(0).normal(size=(len(records), 4)))


def test_one_identity_or_no_shared_identity_is_an_error_not_a_score(faces, tmp_path):
    records = [r for r in scan_folder(faces) if r.identity == synthetic.identity_name(0)]
    with pytest.raises(ValueError, match="1-NN among one identity is right by construction"):
        Identification(protocols.split(records, seed=0)).evaluate(_table(records))
    everyone = scan_folder(faces)
    gallery = [r for r in everyone if r.identity in {synthetic.identity_name(i) for i in (0, 1)}]
    probes = [r for r in everyone if r not in gallery]
    with pytest.raises(ValueError, match="no probe's identity is in the gallery"):
        Identification(protocols.given(gallery, probes)).evaluate(_table(gallery + probes))
    # The script exits non-zero with that line.
    one = tmp_path / "one"
    shutil.copytree(Path(faces) / synthetic.identity_name(0), one / synthetic.identity_name(0))
    proc = _evaluate("--raw_pixels", f"--data_dir={one}", f"--out={tmp_path / 'out'}")
    assert proc.returncode == 1 and "right by construction" in _last_line(proc)


@pytest.mark.slow
def test_constant_images_warn_that_nothing_is_learned(tmp_path):
    # The tiny config as it is (2 epochs): its steps are in the session's XLA cache, where
    # one epoch would be another schedule, so another compilation.
    config = tiny_config()
    dirs = sources.synthetic_dirs(config, str(tmp_path))
    from PIL import Image

    for path in Path(dirs["train"]).glob("*/*.jpg"):
        Image.new("RGB", (32, 32)).save(path)  # all black
    with pytest.warns(UserWarning, match="every training input is constant.*no variance"):
        loop.train_and_evaluate(config, str(tmp_path))


def test_evaluate_honours_the_exclusion_list_and_skips_unreadable_images(faces, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    broken = sorted(data.glob("*/*.jpg"))[3]
    broken.write_bytes(b"")  # a zero-byte file
    proc = _evaluate("--raw_pixels", f"--data_dir={data}", f"--out={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 1 unreadable images" in proc.stderr and "empty (0 bytes)" in proc.stderr
    excluded = sorted(data.glob("*/*.jpg"))[5]
    (tmp_path / "exclude.txt").write_text(f"{excluded.parent.name}/{excluded.name}\n")
    proc = _evaluate("--raw_pixels", f"--data_dir={data}", f"--out={tmp_path / 'out2'}",
                     f"--config.data.exclude_file={tmp_path / 'exclude.txt'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    results = json.loads((tmp_path / "out2" / "results.json").read_text())
    paths = set(results["probes"]["path"])
    assert str(excluded) not in paths and str(broken) not in paths


def test_the_pairing_error_names_the_real_key(tmp_path):
    config = tiny_config()
    config.optim.batch_size = 512
    config.eval.batch_size = 16
    with pytest.raises(ValueError, match=r"config.data.pair_sampler='all_pairs'.*"
                       r"config.optim.batch_size=512; lower the batch size"):
        loop.train_and_evaluate(config, str(tmp_path))
    config.data.pair_sampler = "all_pairs"
    with pytest.raises(ValueError) as error:
        loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert "set config.data.pair_sampler" not in str(error.value)


def test_paths_that_cannot_work_fail_before_any_work(faces, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for workdir, message in ((str(a_file), "is a file or lies under a file"),
                             (str(a_file / "run"), "is a file or lies under a file"),
                             ("", "--workdir is empty")):
        with pytest.raises(ValueError, match=message):
            loop.train_and_evaluate(tiny_config(), workdir)
    config = tiny_config()
    config.data.source, config.data.train_dir = "folder", str(faces)
    config.data.train_extra_dir = str(tmp_path / "not_aligned_yet")
    with pytest.raises(FileNotFoundError, match=r"config.data.train_extra_dir=.*not a folder"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    proc = _evaluate("--raw_pixels", f"--data_dir={faces}", f"--out={a_file}")
    assert proc.returncode == 1 and "--out" in _last_line(proc) and "a file" in _last_line(proc)
    assert "embedding" not in proc.stderr  # refused before any image was read


def test_a_symlink_loop_in_the_data_folder_is_not_a_traceback(faces, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    os.symlink(data / "loop", data / "loop")  # a link to itself
    os.symlink(data / "self.jpg", data / synthetic.identity_name(0) / "self.jpg")
    records = scan_folder(data)
    assert len({r.identity for r in records}) == 6


def test_evaluate_refuses_a_run_of_another_architecture_by_name(tmp_path):
    config = tiny_config()  # as it is: the XLA cache has its steps
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    proc = _evaluate("--config.model.projector=64-64", f"--workdir={tmp_path / 'run'}",
                     f"--data_dir={tmp_path / 'run' / 'synthetic_data' / 'eval'}",
                     f"--out={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert "model.projector: run '32-32', now '64-64'" in _last_line(proc)


def test_overwrite_replaces_only_a_conversion_and_never_touches_the_source(tmp_path):
    source = tmp_path / "weights.pkl"
    source.write_bytes(b"\x80\x02}q\x00.")
    folder = tmp_path / "my_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="is not a conversion"):
        convert.convert_file(str(source), str(folder), overwrite=True)
    assert (folder / "notes.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="is or contains --source"):
        convert.convert_file(str(source), str(tmp_path), overwrite=True)
    with pytest.raises(ValueError, match="is or contains --source"):
        convert.convert_file(str(source), str(source), overwrite=True)
    assert source.read_bytes() == b"\x80\x02}q\x00."


def test_missing_weights_fail_before_the_data_is_read(tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/mlfw.py",
                           f"--workdir={tmp_path / 'run'}",
                           f"--config.init={tmp_path / 'no_weights'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "convert_weights.py" in proc.stderr
    assert "loading" not in proc.stderr  # no image was decoded first
    assert time.time() - start < 120
