"""Config files, --config overrides and clear errors for bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from bt_jax.train import loop

from bt_jax.data import folder

from bt_jax.data import sources
from configs_loader import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


def _parse(name, *overrides):
    argv = ["prog", f"--config={CONFIG_DIR / (name + '.py')}", *overrides]
    values = flags.FlagValues()
    # config_flags defines the --config.* override flags from the argv it is given.
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def test_configs_load_and_take_overrides():
    config = _parse("synthetic", "--config.optim.batch_size=64", "--config.model.dtype=bfloat16")
    assert config.optim.batch_size == 64 and config.model.dtype == "bfloat16"
    assert config.data.source == "synthetic"
    mlfw = _parse("mlfw")
    assert (mlfw.optim.batch_size, mlfw.data.image_size, mlfw.model.projector) == (
        512, 244, "2048-4096-8192")
    assert mlfw.init.startswith("converted_weights/")
    # a variant: its base recipe with a few fields overridden, overrides still applying
    deep = _parse("mlfw_facenet_deep", "--config.optim.batch_size=128")
    base = _parse("mlfw_facenet")
    assert (deep.model.freeze_until, base.model.freeze_until) == ("Mixed_6a", "Mixed_7a")
    assert deep.optim.batch_size == 128 and deep.optim.lr == base.optim.lr
    # a variant of a variant; a fraction of an epoch of warm-up; the extra train folder
    both = _parse("mlfw_facenet_deep_mtcnn", "--config.optim.warmup_epochs=1")
    assert (both.model.freeze_until, both.train.epochs) == ("Mixed_6a", 2)
    assert both.data.train_extra_dir and both.optim.warmup_epochs == 1.0
    assert _parse("mlfw_facenet_deep_mtcnn").optim.warmup_epochs == 0.5


def test_unknown_config_key_is_rejected():
    with pytest.raises((flags.Error, AttributeError), match='Did you mean "batch_size"'):
        _parse("synthetic", "--config.optim.batchsize=64")


def test_locked_config_rejects_new_fields():
    config = _parse("synthetic")
    with pytest.raises(AttributeError):
        config.optim.new_field = 1


def _run_script(tmp_path, *overrides):
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"),
           f"--config={CONFIG_DIR / 'synthetic.py'}", f"--workdir={tmp_path / 'w'}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_batch_not_divisible_by_devices_exits_with_clear_error(tmp_path):
    proc = _run_script(tmp_path, "--config.optim.batch_size=60")
    assert proc.returncode != 0
    assert "config.optim.batch_size=60 must be a positive multiple of config.num_devices=8" \
        in proc.stderr


def test_missing_data_folder_exits_with_clear_error(tmp_path):
    proc = _run_script(tmp_path, "--config.data.source=folder",
                       f"--config.data.train_dir={tmp_path / 'nowhere'}")
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_missing_converted_weights_says_how_to_convert(tiny, tmp_path):
    tiny.init = str(tmp_path / "no_weights")
    with pytest.raises(FileNotFoundError, match="convert_weights.py"):
        loop.train_and_evaluate(tiny, str(tmp_path / "w"))


def test_identities_with_one_image_are_skipped_with_warning(tiny, tmp_path):
    dirs = sources.data_dirs(tiny, str(tmp_path))
    lonely = Path(dirs["train"]) / "Lonely_Person"
    lonely.mkdir()
    first = next(Path(dirs["train"]).glob("*/*.jpg"))
    (lonely / "Lonely_Person_0001_0000.jpg").write_bytes(first.read_bytes())
    with pytest.warns(UserWarning, match="Lonely_Person"):
        records = folder.scan_folder(dirs["train"])
    assert "Lonely_Person" not in {r.identity for r in records}


def test_empty_data_folder_exits_with_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run_script(tmp_path, "--config.data.source=folder",
                       f"--config.data.train_dir={tmp_path / 'empty'}",
                       f"--config.data.val_dir={tmp_path / 'empty'}")
    assert proc.returncode != 0
    assert "empty" in proc.stderr and "_SSSS_VVVV.jpg" in proc.stderr


def test_more_devices_than_available_exits_with_clear_error(tmp_path):
    proc = _run_script(tmp_path, "--config.num_devices=16", "--config.optim.batch_size=32",
                       "--config.eval.batch_size=32")
    assert proc.returncode != 0
    assert "config.num_devices=16 but only 8" in proc.stderr
