"""The frozen trunk cannot change under a run (issue 29, item 5): the converted weights a
run started from are recorded and checked, every activation cache file is verified
against the digest written with it, a failed write leaves nothing behind, and an
embedder's queries do not grow the cache."""

from __future__ import annotations

import errno
import json
import os
import re
import warnings

import jax
import numpy as np
import pytest
import test_trunk
from test_trunk import SIZE, _random_variables

from bt_jax.network import embedder, embedding, trunk
from bt_jax.runtime import run_config
from bt_jax.weights import convert, pretrained

# test_trunk's fixtures: a converted tiny_inception folder and a config frozen at Mixed_6a
# with its cache in the test's own folder.
tiny_weights, frozen = test_trunk.tiny_weights, test_trunk.frozen


def _images(seed: int, n: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _convert(seed: int, out) -> None:
    """Write tiny_inception weights drawn with ``seed`` to ``out``, replacing what is there."""
    variables = _random_variables(seed)
    convert.save(convert.Conversion(
        {"params": {"backbone": variables["params"]},
         "batch_stats": {"backbone": variables["batch_stats"]}},
        {"architecture": {"arch": "tiny_inception"}, "normalization": "facenet"}),
        str(out), overwrite=True)


def _cache_files(config) -> list:
    folder = os.path.join(config.data.trunk_cache_dir, "trunk")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_replaced_trunk_weights_stop_a_resume_and_an_evaluation(frozen, tmp_path):
    weights, workdir = tmp_path / "weights", tmp_path / "run"
    _convert(0, weights)
    frozen.init = str(weights)
    workdir.mkdir()
    run_config.save(frozen, str(workdir))
    recorded = json.loads((workdir / run_config.FILE).read_text())[run_config.DIGEST]
    # Converting the same weights again writes other files (orbax names them at random
    # and stamps the time) but the same arrays: that is no change.
    _convert(0, weights)
    run_config.check(frozen, str(workdir), action="resume")
    _convert(1, weights)
    now = pretrained.converted_digest(str(weights))
    assert now != recorded
    for action in ("resume", "load"):
        with pytest.raises(ValueError, match=f"cannot {action} the run") as refused:
            run_config.check(frozen, str(workdir), action=action)
        message = str(refused.value)
        assert all(s in message for s in (str(weights), recorded, now, "--workdir"))
        assert "\n" not in message
    # A run recorded before digests were kept cannot be checked: it says so.
    saved = json.loads((workdir / run_config.FILE).read_text())
    del saved[run_config.DIGEST]
    (workdir / run_config.FILE).write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="records no digest"):
        run_config.check(frozen, str(workdir), action="resume")


def _corrupt(path: str, truncate: bool) -> None:
    """Garbage of the right size over the array's bytes, or the file cut in half."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if truncate:
            f.truncate(size // 2)
        else:
            f.seek(size - 4096)
            f.write(np.random.default_rng(7).bytes(4096))


def test_a_bad_or_unverified_cache_file_is_recomputed_with_a_warning(frozen):
    images = _images(0)
    frozen_trunk = trunk.Trunk(frozen, progress=False)
    acts, path = frozen_trunk.activations(images)
    key = trunk.cache_key(frozen, frozen_trunk.variables, images)
    folder = os.path.dirname(path)
    # A file from before digests were kept: its sidecar has none.
    legacy = os.path.join(folder, f"{key}.npy")
    np.save(legacy, acts)
    with open(os.path.join(folder, f"{key}.json"), "w") as f:
        json.dump({"what": "images", "images": len(images)}, f)
    cases = [(legacy, "no digest", None), (path, "does not match", False),
             (path, "cannot be read", True)]
    for bad, why, truncate in cases:
        if truncate is not None:
            _corrupt(bad, truncate)
        with pytest.warns(UserWarning, match=f"{re.escape(bad)}.*{why}.*recomputed"):
            again, path = frozen_trunk.activations(images)
        assert np.array_equal(again, acts)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # verified: read without a word
            assert np.array_equal(frozen_trunk.activations(images)[0], acts)
    assert not os.path.exists(legacy)
    assert _cache_files(frozen) == sorted([os.path.basename(path), f"{key}.json"])


def test_a_full_disk_leaves_no_staging_file_and_names_the_cache(frozen, monkeypatch):
    def full_disk(file, array, *args, **kwargs):
        file.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(ValueError, match="No space left on device") as refused:
        trunk.Trunk(frozen, progress=False).activations(_images(1))
    message = str(refused.value)
    assert os.path.join(frozen.data.trunk_cache_dir, "trunk") in message
    assert "BT_JAX_CACHE" in message and "\n" not in message
    assert _cache_files(frozen) == []


def test_an_embedder_call_on_new_images_writes_nothing_to_the_cache(frozen):
    """What identify's queries go through: the trunk is run, its activations not kept."""
    variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype),
                             embedding.variable_shapes(frozen))
    embed = embedder.NetworkEmbedder(frozen, variables, progress=False)
    assert embed(_images(2, 3)).shape[0] == 3
    assert _cache_files(frozen) == []
