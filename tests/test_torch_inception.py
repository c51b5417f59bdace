"""The PyTorch Inception-ResNet-v1 (``bt_jax.reference.torch_models``) against our Flax one.

The tiny variant runs with random weights and non-trivial BatchNorm statistics, in eval
and train mode; the full-size one with the converted FaceNet CASIA weights when they are
there (``<repo>/converted_weights/facenet_casia`` or $BT_JAX_FACENET_WEIGHTS). The first
check of the port is tests/test_facenet.py, against OpenCV running the TF graph; this is
the second, against an independent PyTorch implementation.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from bt_jax.data import preprocess
from bt_jax.models.inception_resnet import inception_resnet_v1, tiny_inception_resnet

torch = pytest.importorskip(
    "torch", reason="the PyTorch reference needs torch: pip install torch==2.13.0 "
                    "(or the 'test' extra)")
from bt_jax.reference import torch_models  # noqa: E402  (imports torch itself)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5  # max |torch - flax| / max |flax|, float32
TRAIN_TOLERANCE = 1e-4  # batch statistics: a sum over the batch in each BatchNorm
TINY_SIZE = 80  # the tiny variant's stem still needs >= 75 px for the two reductions


def _relative(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def _random_variables(model, image_size: int, seed: int):
    """Random variables of ``model``'s shapes, drawn in NumPy (compiling Flax's init costs
    more than the whole test): He-scaled kernels, and BatchNorm and biases away from Flax's
    scale 1, bias 0, mean 0, var 1, so that a swapped or dropped tensor shows."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            np.zeros((1, image_size, image_size, 3), np.float32))
    draw = {"kernel": lambda s: rng.normal(0, (2 / np.prod(s[:-1])) ** 0.5, s),
            "scale": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.uniform(-.1, .1, s),
            "mean": lambda s: rng.normal(0, 0.1, s), "var": lambda s: rng.uniform(0.5, 2.0, s)}
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: draw[path[-1].key](leaf.shape).astype(np.float32), shapes)


def _without_bottleneck(variables):
    return {c: {k: v for k, v in tree.items() if k != "Bottleneck"}
            for c, tree in variables.items()}


def _nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_out(model, x: np.ndarray, train: bool = False) -> np.ndarray:
    model.train(train)
    with torch.no_grad():
        return model(_nchw(x)).numpy()


@pytest.fixture(scope="module")
def tiny():
    images = np.random.default_rng(1).normal(0, 1, (4, TINY_SIZE, TINY_SIZE, 3))
    images = images.astype(np.float32)
    return _random_variables(tiny_inception_resnet(), TINY_SIZE, seed=2), images


def test_tiny_eval_mode_matches_flax(tiny):
    variables, images = tiny
    errors = {}
    for output, tree in (("bottleneck", variables), ("pooled", _without_bottleneck(variables))):
        ours = jax.jit(tiny_inception_resnet(output=output).apply)(tree, images)
        model = torch_models.load_flax_variables(
            torch_models.tiny_inception_resnet(output=output), tree)
        errors[output] = _relative(_torch_out(model, images), ours)
        assert ours.shape == (4, model.feature_dim())
    print("tiny eval, relative max error:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOLERANCE, errors


def test_tiny_train_mode_matches_flax(tiny):
    variables, images = tiny
    flax_model = tiny_inception_resnet()
    ours, updated = jax.jit(lambda v, x: flax_model.apply(v, x, train=True,
                                                          mutable=["batch_stats"]))(
        variables, images)
    model = torch_models.load_flax_variables(torch_models.tiny_inception_resnet(), variables)
    theirs = _torch_out(model, images, train=True)
    error = _relative(theirs, ours)
    # Both move the running mean 0.1 of the way to the batch mean. (The running variance
    # differs by n / (n - 1): PyTorch averages the unbiased batch variance, Flax the biased.)
    mean = updated["batch_stats"]["Mixed_6a"]["Branch_1"]["Conv2d_0b_3x3"]["BatchNorm"]["mean"]
    torch_mean = model.Mixed_6a.Branch_1.Conv2d_0b_3x3.BatchNorm.running_mean.numpy()
    print(f"tiny train, relative max error: {error:.1e}, "
          f"running mean {_relative(torch_mean, mean):.1e}")
    assert error <= TRAIN_TOLERANCE
    assert _relative(torch_mean, mean) <= TRAIN_TOLERANCE


def test_split_frozen_bn_and_the_barlow_twins_wrapper(tiny):
    """stop_after/start_after halves rebuild the whole network from sub-trees of its
    weights; frozen_bn keeps running statistics in train mode; the benchmark's
    BarlowTwinsReference takes the backbone as it takes the ResNet."""
    variables, images = tiny
    whole = torch_models.load_flax_variables(torch_models.tiny_inception_resnet(), variables)
    trunk = torch_models.tiny_inception_resnet(stop_after="Mixed_6a")
    head = torch_models.tiny_inception_resnet(start_after="Mixed_6a")
    for half in (trunk, head):
        names = {name for name, _ in half.named_children()}
        torch_models.load_flax_variables(
            half, {c: {k: v for k, v in tree.items() if k in names}
                   for c, tree in variables.items()})
    x = _nchw(images)
    with torch.no_grad():
        expected = whole.eval()(x)
        np.testing.assert_allclose(head.eval()(trunk.eval()(x)), expected, rtol=0, atol=0)
        frozen = torch_models.tiny_inception_resnet(frozen_bn=True)
        torch_models.load_flax_variables(frozen, variables).train()
        np.testing.assert_allclose(frozen(x), expected, rtol=1e-6, atol=1e-6)
    backbone = torch_models.tiny_inception_resnet(output="pooled")
    pair = torch_models.BarlowTwinsReference(backbone, [backbone.feature_dim(), 64, 16])
    pair = pair.train().to(memory_format=torch.channels_last)
    z = pair.embed(x.contiguous(memory_format=torch.channels_last))
    pair.loss(z, z.flip(0), 0.005).backward()
    assert z.shape == (4, 16) and backbone.Conv2d_1a_3x3.conv.weight.grad is not None


def test_load_errors_name_every_bad_tensor(tiny):
    variables, _ = tiny
    params = dict(variables["params"])
    params.pop("Conv2d_2a_3x3")
    params["Extra"] = {"kernel": np.zeros((1, 1), np.float32)}
    params["Bottleneck"] = {**params["Bottleneck"],
                            "dense": {"kernel": np.zeros((3, 32), np.float32)}}
    with pytest.raises(ValueError) as info:
        torch_models.load_flax_variables(torch_models.tiny_inception_resnet(),
                                         {**variables, "params": params})
    message = str(info.value)
    assert "missing from the Flax tree: Conv2d_2a_3x3.conv.weight" in message
    assert "no place in the PyTorch model for params/Extra/kernel" in message
    assert ("params/Bottleneck/dense/kernel: Flax gives (32, 3) as Bottleneck.dense.weight, "
            "the PyTorch model has (32, 112)") in message
    with pytest.raises(ValueError, match="nest the network under 'backbone'"):
        torch_models.load_flax_variables(torch_models.tiny_inception_resnet(),
                                         {c: {"backbone": t} for c, t in variables.items()})


def test_tf_same_padding_only_where_it_is_symmetric():
    assert torch_models.tf_same_padding((1, 7), 1) == (0, 3)
    assert torch_models.tf_same_padding((3, 1), 1) == (1, 0)
    for kernel, stride in (((3, 3), 2), ((2, 2), 1)):
        with pytest.raises(ValueError, match="asymmetric"):
            torch_models.tf_same_padding(kernel, stride)


def test_facenet_weights_match_flax(converted):
    """The real CASIA weights (the graph fetched and converted as in test_facenet.py; it
    skips, saying why, only where the graph cannot be fetched)."""
    from bt_jax.weights.pretrained import read_converted

    loaded = read_converted(converted[0])
    variables = {c: jax.device_get(loaded[c]["backbone"]) for c in ("params", "batch_stats")}
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 256, (160, 160, 3), dtype=np.uint8),
                       np.broadcast_to(np.linspace(0, 255, 160)[None, :, None], (160, 160, 3))
                       .astype(np.uint8)])
    x = np.asarray(preprocess.normalize(images, "facenet"), np.float32)
    ours = np.asarray(jax.jit(inception_resnet_v1().apply)(variables, x))
    model = torch_models.load_flax_variables(torch_models.inception_resnet_v1(), variables)
    error = _relative(_torch_out(model, x), ours)
    print(f"FaceNet CASIA, 160 px, relative max error of the embedding: {error:.1e}")
    assert ours.shape == (2, 512) and error <= TOLERANCE
