"""An exported embedder is what its embedder.json says (issue 29, items 4 and 6).

The export here is the tiny network with weights drawn in numpy (``load_weights`` would
compile the initialiser, ~20 s on 2 cores) and for the CPU only: the checks under test
read the files, not the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.identify import export, exported
from bt_jax.network import embedding
from conftest import tiny_config, tiny_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """(config, variables, export folder) of the tiny network, exported for the CPU."""
    config = tiny_config()
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype),
                             embedding.variable_shapes(config))
    out = tmp_path_factory.mktemp("integrity") / "tiny"
    export.export_embedder(config, variables, str(out), platforms=["cpu"])
    return config, variables, str(out)


def _copy(out, tmp_path, name="copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(out, copy)
    return copy


def _edit_info(folder: Path, edit) -> None:
    path = folder / exported.INFO_FILE
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def test_a_bin_from_another_export_is_refused_naming_both_digests(tiny_export, tmp_path):
    out = _copy(tiny_export[2], tmp_path)
    recorded = json.loads((out / exported.INFO_FILE).read_text())["function_sha256"]
    # Another embedder with the same contract (32 px crops in, same width out): loading it
    # under this .json gave another network's embeddings with this fingerprint.
    width = exported.load_embedder(str(out)).feature_dim
    other = jax.export.export(jax.jit(lambda x: jnp.zeros((x.shape[0], width))),
                              platforms=("cpu",))(jax.ShapeDtypeStruct(
                                  jax.export.symbolic_shape("b, 32, 32, 3"), jnp.uint8))
    (out / exported.FUNCTION_FILE).write_bytes(bytes(other.serialize()))
    with pytest.raises(ValueError) as refused:
        exported.load_embedder(str(out))
    message = str(refused.value)
    assert str(out / exported.FUNCTION_FILE) in message and recorded in message
    assert hashlib.sha256((out / exported.FUNCTION_FILE).read_bytes()).hexdigest() in message
    assert "export again" in message


def test_an_edited_or_incomplete_json_is_refused_naming_the_field(tiny_export, tmp_path):
    cases = [
        # A wrong image_size blamed the user's correct 32 px crops.
        (lambda i: {**i, "image_size": 64}, r"image_size 64.*embedder.bin takes .*32, 32, 3"),
        (lambda i: {**i, "feature_dim": 7}, r"feature_dim 7.*embedder.bin gives \d+ floats"),
        (lambda i: {k: v for k, v in i.items() if k not in ("metric", "fingerprint")},
         r"lacks the keys fingerprint, metric"),  # a KeyError before
        (lambda i: {**i, "feature_dim": "wide"}, r"feature_dim is 'wide' \(str\), not an int"),
        (lambda i: {**i, "image_size": True}, r"image_size is True \(bool\), not an int"),
        (lambda i: [i], r"holds a list, not an object"),
        (lambda i: {**i, "format_version": 1},
         rf"format_version 1; this bt_jax reads version {exported.FORMAT_VERSION}"),
    ]
    for k, (edit, message) in enumerate(cases):
        out = _copy(tiny_export[2], tmp_path, f"edit{k}")
        _edit_info(out, edit)
        with pytest.raises(ValueError, match=message) as refused:
            exported.load_embedder(str(out))
        assert str(out / exported.INFO_FILE) in str(refused.value), message


def test_unknown_platforms_and_unwritable_folders_are_refused_before_the_compile(
        tiny_export, tmp_path, monkeypatch):
    config, variables, _ = tiny_export

    def no_compile(*args, **kwargs):
        raise AssertionError("the export was compiled before its arguments were checked")

    monkeypatch.setattr(jax.export, "export", no_compile)
    with pytest.raises(ValueError, match=r"--platforms: 'foo' .*cpu, cuda, rocm, tpu"):
        export.export_embedder(config, variables, str(tmp_path / "foo"), platforms=["foo"])
    with pytest.raises(ValueError, match="--platforms is empty"):
        export.export_embedder(config, variables, str(tmp_path / "none"), platforms=[])
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"a_file/sub.* is under .*a_file', a file"):
        export.export_embedder(config, variables, str(tmp_path / "a_file" / "sub" / "out"))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_parent_is_refused_before_the_compile(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="locked.* is not writable"):
            export.check_out_dir(str(locked / "out"), overwrite=False)
    finally:
        locked.chmod(0o755)


def test_the_script_refuses_bad_platforms_and_out_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")

    def start(out, platforms):
        return subprocess.Popen([sys.executable, "scripts/export.py", "--config",
                                 "configs/synthetic.py", *tiny_flags(), "--init=scratch",
                                 f"--out={out}", f"--platforms={platforms}"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # Both at once: each is a fresh python importing jax, and neither compiles anything.
    runs = [start(tmp_path / "out", "cpu,foo"), start(tmp_path / "a_file" / "out", "cpu")]
    for run, message in zip(runs, ["error: ValueError: --platforms: 'foo' is not a",
                                   "error: ValueError: export folder"]):
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 1, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(message) and "Traceback" not in stderr, stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
