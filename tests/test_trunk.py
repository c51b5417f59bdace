"""A frozen trunk computed once: the split, the activation cache, BatchNorm recalibration,
and a tiny end-to-end fine-tuning run through the one training loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.weights import convert
from bt_jax.network import embedding, trunk
from bt_jax.train import loop
from bt_jax.models.inception_resnet import tiny_inception_resnet

SIZE = 80
SPLIT = "Mixed_6a"


def _random_variables(seed=0):
    """Tiny Inception-ResNet variables drawn in numpy (model.init compiles or runs op by op
    for a minute on 2 cores): kernels scaled by fan-in, non-trivial BatchNorm statistics."""
    shapes = jax.eval_shape(tiny_inception_resnet().init, jax.random.key(seed),
                            jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(x.shape[:-1])), x.shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 2.0, x.shape)
        else:  # bias, mean
            value = rng.normal(0, 0.1, x.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A converted-weights folder for tiny_inception, as convert_weights.py writes one."""
    out = tmp_path_factory.mktemp("weights") / "tiny_inception"
    variables = _random_variables()
    conversion = convert.Conversion(
        {"params": {"backbone": variables["params"]},
         "batch_stats": {"backbone": variables["batch_stats"]}},
        {"architecture": {"arch": "tiny_inception"}, "normalization": "facenet"})
    convert.save(conversion, str(out))
    return str(out)


@pytest.fixture
def frozen(tiny, tiny_weights, tmp_path):
    tiny.model.arch = "tiny_inception"
    tiny.model.freeze_until = SPLIT
    tiny.data.image_size = SIZE
    tiny.data.normalization = "facenet"
    tiny.data.trunk_cache_dir = str(tmp_path / "cache")
    tiny.init = tiny_weights
    return tiny


@pytest.mark.slow
def test_the_head_after_the_trunk_is_the_whole_network():
    variables = _random_variables()
    x = jax.random.normal(jax.random.key(1), (3, SIZE, SIZE, 3))
    whole = tiny_inception_resnet().apply(variables, x)
    acts = tiny_inception_resnet(stop_after=SPLIT).apply(variables, x)
    head = tiny_inception_resnet(start_after=SPLIT)
    head_vars = jax.eval_shape(lambda: head.init(jax.random.key(0), acts))
    subset = {c: {k: variables[c][k] for k in head_vars[c]} for c in variables}
    assert "Conv2d_1a_3x3" not in subset["params"] and "block17_1" in subset["params"]
    np.testing.assert_allclose(head.apply(subset, acts), whole, rtol=1e-5, atol=1e-6)


def test_cache_is_computed_once_and_keyed_by_weights_pixels_and_preprocessing(frozen,
                                                                             monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    first = trunk.Trunk(frozen, progress=False)
    acts, path = first.activations(images)
    assert acts.shape[0] == 5 and acts.dtype == trunk.CACHE_DTYPE and os.path.isfile(path)
    exact = np.asarray(first.model.apply(first.variables, (images - 127.5) / 128.0))
    np.testing.assert_allclose(acts, exact, rtol=2e-3, atol=2e-3)  # float16 storage

    def no_compute(*args, **kwargs):
        raise AssertionError("the cached activations should have been read")

    monkeypatch.setattr(trunk.Trunk, "compute", no_compute)
    again, same_path = trunk.Trunk(frozen, progress=False).activations(images)
    assert same_path == path and np.array_equal(again, acts)
    monkeypatch.undo()
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert trunk.Trunk(frozen, progress=False).activations(changed)[1] != path
    frozen.data.normalization = "mlfw"
    assert trunk.Trunk(frozen, progress=False).activations(images)[1] != path
    frozen.data.normalization = "facenet"
    other = trunk.Trunk(frozen, progress=False)
    other.variables = jax.tree.map(lambda x: x * 1.01, other.variables)
    assert other.activations(images)[1] != path


def test_bad_split_settings_name_the_fix(frozen):
    frozen.model.freeze_until = "Mixed_9z"
    with pytest.raises(ValueError, match="'Mixed_9z' is not a layer of tiny_inception"):
        loop.check_config(frozen)
    frozen.model.freeze_until = SPLIT
    frozen.init = "scratch"
    with pytest.raises(ValueError, match="init='scratch' has none"):
        loop.check_config(frozen)
    frozen.model.arch = "tiny"
    with pytest.raises(ValueError, match="not config.model.arch='tiny'"):
        loop.check_config(frozen)


def test_recalibration_keeps_the_inference_function_and_aligns_batch_statistics(frozen):
    """After recalibration the eval-mode output is unchanged and a train-mode forward on
    the same inputs (batch statistics) gives nearly the same features."""
    frozen.model.bn_mode = "recalibrate"
    start = embedding.initial_variables(frozen)
    model = embedding.create_model(frozen)
    images = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    x = jnp.asarray(trunk.Trunk(frozen, progress=False).compute(images), jnp.float32)
    params, stats = trunk.recalibrate_batchnorm(frozen, model, start["params"],
                                                start["batch_stats"], x)

    def features(p, s, training):
        out = model.apply({"params": p, "batch_stats": s}, x, training,
                          method=model.features, mutable=["batch_stats"] if training else False)
        return np.asarray(out[0] if training else out)

    before = features(start["params"], start["batch_stats"], False)
    np.testing.assert_allclose(features(params, stats, False), before, rtol=1e-4, atol=1e-4)
    naive = features(start["params"], start["batch_stats"], True)
    recal = features(params, stats, True)
    assert np.abs(recal - before).max() < 0.1 * np.abs(naive - before).max()


def test_rematerialised_head_gives_the_same_loss_gradients_and_statistics():
    """config.model.remat recomputes each block in the backward pass: only memory and
    compute change, not the function, its gradients or the BatchNorm statistics (batch
    statistics in training, the harder case: they are a mutable collection)."""
    variables = _random_variables()
    trunk_apply = jax.jit(tiny_inception_resnet(stop_after="Mixed_7a").apply)  # eager: 30 s
    acts = trunk_apply(variables, jax.random.normal(jax.random.key(1), (4, SIZE, SIZE, 3)))

    def loss_and_grads(remat):
        head = tiny_inception_resnet(start_after="Mixed_7a", remat=remat)
        shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), acts))
        subset = {c: {k: variables[c][k] for k in shapes[c]} for c in shapes}

        def loss(params):
            out, state = head.apply({"params": params, "batch_stats": subset["batch_stats"]},
                                    acts, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out)), state

        # jit: eager execution of the backward pass op by op takes minutes
        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (value, state), grads = step(subset["params"])
        return value, grads, state

    plain, remat = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    for got, want in zip(jax.tree.leaves(remat[1:]), jax.tree.leaves(plain[1:])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(remat[1]) == jax.tree.structure(plain[1])


@pytest.mark.slow
def test_tiny_frozen_run_end_to_end_and_evaluate_from_images(frozen, tmp_path):
    """Training on cached activations through the one loop (with the blocks rematerialised,
    as a deeper split uses them), then scripts/evaluate.py on the checkpoint, which runs
    images through the trunk and the trained head."""
    frozen.model.bn_mode = "recalibrate"
    frozen.model.remat = True
    frozen.optim.name = "adamw"
    frozen.optim.backbone_lr_scale = 0.1
    workdir = tmp_path / "run"
    results = loop.train_and_evaluate(frozen, str(workdir))
    assert np.isfinite(results["trained"]["accuracy"])
    cached = [f for f in os.listdir(tmp_path / "cache" / "trunk") if f.endswith(".npy")]
    assert len(cached) == 3  # train, val, eval: each computed once
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [m for m in metrics if "loss" in m]
    assert steps[-1]["lr_weights"] < frozen.optim.lr and len({m["loss"] for m in steps}) > 1
    assert len({m["val_loss"] for m in metrics if "val_loss" in m}) == 2
    # The untrained baseline is the pretrained network: recalibration changed no output.
    from conftest import tiny_flags

    flags = [f for f in tiny_flags() if "image_size" not in f] + [
        "--config.model.arch=tiny_inception", f"--config.model.freeze_until={SPLIT}",
        f"--config.data.image_size={SIZE}", "--config.data.normalization=facenet",
        f"--config.data.trunk_cache_dir={tmp_path / 'cache'}", f"--config.init={frozen.init}",
        "--config.model.bn_mode=recalibrate", "--config.optim.name=adamw",
        "--config.optim.backbone_lr_scale=0.1"]
    out = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--config", "configs/synthetic.py", *flags,
         f"--workdir={workdir}", f"--data_dir={workdir / 'synthetic_data' / 'eval'}",
         f"--out={tmp_path / 'eval'}", "--bootstrap_samples=10"],
        capture_output=True, text=True, cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "source-disjoint" in out.stdout
