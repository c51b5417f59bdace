"""The exported embedder: the evaluator's function, loadable without model code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bt_jax.identify import export, exported
from bt_jax.network import embedder
from conftest import tiny_config, tiny_flags
from test_trunk import SIZE, frozen, tiny_weights  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """(config, variables, export folder) of the tiny untrained network."""
    config = tiny_config()
    variables = embedder.load_weights(config, init="scratch").variables
    out = tmp_path_factory.mktemp("export") / "tiny"
    export.export_embedder(config, variables, str(out))
    return config, variables, str(out)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _assert_close(got, want, relative=1e-6):
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= relative * np.abs(want).max()


def test_fresh_process_embeds_like_the_evaluator_without_model_code(scratch, tmp_path):
    config, variables, out = scratch
    # 5 and 37 rows: neither the evaluator's batch (16) nor one padded chunk of the loader.
    batches = {"five": _images(5, 32, 1), "thirty_seven": _images(37, 32, 2)}
    for name, images in batches.items():
        np.save(tmp_path / f"{name}.npy", images)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from bt_jax.identify.exported import load_embedder
        embed = load_embedder({out!r})
        for name in {list(batches)!r}:
            np.save({str(tmp_path)!r} + f"/{{name}}_out.npy",
                    embed(np.load({str(tmp_path)!r} + f"/{{name}}.npy")))
        heavy = [m for m in ("flax", "bt_jax.models.backbones", "bt_jax.network.embedding",
                             "bt_jax.identify.export") if m in sys.modules]
        assert not heavy, f"loading imported {{heavy}}"
        print(embed.image_size, embed.feature_dim, embed.metric, embed.fingerprint)
    """)
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    info = json.loads((Path(out) / exported.INFO_FILE).read_text())
    assert child.stdout.split() == ["32", str(info["feature_dim"]), config.eval.metric,
                                    info["fingerprint"]]
    evaluator = embedder.NetworkEmbedder(config, variables, progress=False)
    for name, images in batches.items():
        _assert_close(np.load(tmp_path / f"{name}_out.npy"), evaluator(images))


def test_the_json_names_the_input_contract_and_the_fingerprint(scratch):
    from bt_jax.network import embedding

    config, variables, out = scratch
    info = json.loads((Path(out) / exported.INFO_FILE).read_text())
    assert info["format_version"] == exported.FORMAT_VERSION
    assert {k: info[k] for k in embedding.preprocessing(config)} == \
        embedding.preprocessing(config)
    assert info["fingerprint"] == embedding.fingerprint(config, variables)
    assert info["arch"] == "tiny" and info["feature_dim"] > 0
    assert info["platforms"] == list(export.PLATFORMS)
    assert "aligned face crops" in info["inputs"]
    assert sorted(os.listdir(Path(out).parent)) == ["tiny"]  # no staging folder left


@pytest.mark.slow
def test_frozen_trunk_and_head_export_as_one_function(frozen, tmp_path):  # noqa: F811
    frozen.eval.embedding = "projector"
    variables = embedder.load_weights(frozen).variables
    out = export.export_embedder(frozen, variables, str(tmp_path / "frozen"))
    embed = exported.load_embedder(out)
    assert embed.info["freeze_until"] == frozen.model.freeze_until
    assert embed.info["embedding"] == "projector" and embed.feature_dim == 32
    images = _images(6, SIZE, 3)
    # Both round the trunk's activations to float16, but the evaluator computes them in
    # per-device batches of 8: an activation on a rounding boundary may land one float16
    # step apart (measured: 3.6e-6 relative at the output; the head alone agrees to 3e-7).
    _assert_close(embed(images), embedder.NetworkEmbedder(frozen, variables,
                                                         progress=False)(images), 1e-4)


def test_large_batches_run_in_chunks(scratch, monkeypatch):
    embed = exported.load_embedder(scratch[2])
    images = _images(11, 32, 4)
    whole = embed(images)
    monkeypatch.setattr(exported, "CHUNK", 4)
    np.testing.assert_allclose(embed(images), whole, rtol=1e-6, atol=1e-6)
    assert embed(images[:0]).shape == (0, embed.feature_dim)


def test_wrong_images_and_folders_are_refused_by_name(scratch, tmp_path):
    embed = exported.load_embedder(scratch[2])
    for bad in (_images(2, 64), _images(2, 32).astype(np.float32), _images(1, 32)[0]):
        with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\).*image_size=32"):
            embed(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        exported.load_embedder(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    shutil.copytree(scratch[2], partial)
    (partial / exported.FUNCTION_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="lacks embedder.bin"):
        exported.load_embedder(str(partial))
    future = tmp_path / "future"
    shutil.copytree(scratch[2], future)
    info = json.loads((future / exported.INFO_FILE).read_text())
    (future / exported.INFO_FILE).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99; this bt_jax reads version "
                                         f"{exported.FORMAT_VERSION}"):
        exported.load_embedder(str(future))


def test_an_existing_folder_is_replaced_only_when_asked_and_only_if_an_export(scratch,
                                                                            tmp_path):
    config, variables, out = scratch
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        export.export_embedder(config, variables, out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="never deleted"):
        export.export_embedder(config, variables, str(mine), overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"


@pytest.mark.slow
def test_the_script_exports_and_refuses_an_existing_folder(scratch, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(scratch[2], out)
    (out / exported.INFO_FILE).write_text("{}")  # replaced below, or the loader would refuse

    def run(*args, weights="--init=scratch"):
        return subprocess.run([sys.executable, "scripts/export.py", "--config",
                               "configs/synthetic.py", *tiny_flags(), weights,
                               f"--out={out}", "--platforms=cpu", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    no_run = run("--overwrite", weights=f"--workdir={tmp_path / 'no_run'}")
    assert no_run.returncode == 1
    assert no_run.stderr.strip().splitlines()[-1].startswith("error: FileNotFoundError: no "
                                                             "checkpoints/ folder")
    refused = run()
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("error: FileExistsError")
    assert "--overwrite" in refused.stderr
    done = run("--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
    info = exported.load_embedder(str(out)).info
    assert info["fingerprint"] in done.stdout and str(out) in done.stdout
    assert info["fingerprint"] == exported.read_info(scratch[2])["fingerprint"]
    assert info["platforms"] == ["cpu"]
