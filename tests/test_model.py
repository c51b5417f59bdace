"""Model topology, shapes and cross-device BatchNorm."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.models.backbones import ARCHS
from bt_jax.models.barlow import BarlowTwins, Projector, parse_projector_sizes
from bt_jax.models.resnet import resnet50, small_resnet, tiny_resnet
from bt_jax.models.resnet import _max_pool_ceil
from bt_jax.runtime.parallel import AXIS


def _shapes(model, size):
    x = jnp.zeros((2, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    return variables, out.shape


def test_resnet50_gives_8192_features_at_244():
    variables, shape = _shapes(resnet50(), 244)
    assert shape == (2, 8192)
    assert resnet50().feature_dim(244) == 8192
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert n_params == 23_508_032  # torchvision-size ResNet-50 without its fc layer


@pytest.mark.parametrize("size, window, features", [(64, 2, 256), (112, 4, 256), (112, 1, 4096)])
def test_small_resnet_pools_globally_at_its_sizes(size, window, features):
    """configs/mlfw_cpu.py's backbone: the config's window is the whole final map."""
    model = small_resnet(pool_window=window)
    variables, shape = _shapes(model, size)
    assert shape == (2, features) and model.feature_dim(size) == features
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert n_params == 309_904  # vs 23.5M for ResNet-50: a model for an hour on a CPU
    assert ARCHS["small"] is small_resnet


def test_resnet50_topology_and_names():
    variables, _ = _shapes(resnet50(), 224)
    params = variables["params"]
    blocks = sorted(k for k in params if k.startswith("layer"))
    assert len(blocks) == 16 and blocks[0] == "layer1_0" and blocks[-1] == "layer4_2"
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
    # Projection shortcut only on the first block of each stage.
    assert {k for k in blocks if "downsample_conv" in params[k]} == {
        "layer1_0", "layer2_0", "layer3_0", "layer4_0"}
    assert params["layer2_0"]["conv1"]["kernel"].shape == (1, 1, 256, 128)
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert "fc" not in params
    with_fc, shape = _shapes(resnet50(num_classes=8631), 224)
    assert shape == (2, 8631) and with_fc["params"]["fc"]["kernel"].shape == (2048, 8631)


def test_stride_sits_on_first_1x1_conv():
    """Strided 1x1 then 3x3 at stride 1 halves 56 -> 28 in the first block of layer2."""
    model = resnet50()
    x = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=lambda mdl, _: mdl.name in (
            "conv1", "conv2"), mutable=["intermediates"]), variables)
    inter = state["intermediates"]["layer2_0"]
    assert inter["conv1"]["__call__"][0].shape == (1, 28, 28, 128)
    assert inter["conv2"]["__call__"][0].shape == (1, 28, 28, 128)


@pytest.mark.parametrize("size", [122, 121, 8, 7])
def test_max_pool_ceil_mode_matches_definition(size):
    x = np.random.default_rng(0).normal(size=(1, size, size, 1)).astype(np.float32)
    got = np.asarray(_max_pool_ceil(jnp.asarray(x), 3, 2))
    out = int(np.ceil((size - 3) / 2)) + 1
    if (out - 1) * 2 >= size:
        out -= 1
    want = np.array([[x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max() for j in range(out)]
                     for i in range(out)])
    np.testing.assert_array_equal(got[0, :, :, 0], want)


def test_small_feature_map_gets_clear_error():
    with pytest.raises(ValueError, match="pool_window"):
        _shapes(resnet50(), 112)


def test_projector_sizes_and_names():
    assert parse_projector_sizes("2048-4096-8192") == (2048, 4096, 8192)
    for bad in ("", "2048-x", "0-10"):
        with pytest.raises(ValueError, match="projector"):
            parse_projector_sizes(bad)
    proj = Projector((16, 32, 8))
    variables = proj.init(jax.random.key(0), jnp.zeros((4, 40)))
    assert set(variables["params"]) == {"linear0", "bn0", "linear1", "bn1", "linear2"}
    assert variables["params"]["linear0"]["kernel"].shape == (40, 16)
    assert "bias" not in variables["params"]["linear2"]


@pytest.mark.slow
def test_batchnorm_statistics_span_all_devices():
    """Train-mode forward on 8 devices equals one device on the concatenated batch."""
    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
    single = BarlowTwins(tiny_resnet(), Projector((16, 8)))
    variables = jax.jit(single.init, static_argnames="train")(jax.random.key(0), x[:2], x[:2],
                                                              train=False)
    ref, ref_state = jax.jit(single.apply, static_argnames=("train", "mutable"))(
        variables, x, x[::-1], train=True, mutable=("batch_stats",))

    multi = BarlowTwins(tiny_resnet(axis_name=AXIS), Projector((16, 8), axis_name=AXIS))

    def step(v, a, b):
        return multi.apply(v, a, b, train=True, mutable=["batch_stats"])

    shard = lambda a: a.reshape(8, 2, *a.shape[1:])
    (z1, z2), state = jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, 0))(
        variables, shard(x), shard(x[::-1]))
    np.testing.assert_allclose(np.asarray(z1).reshape(16, -1), ref[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(z2).reshape(16, -1), ref[1], rtol=1e-4, atol=1e-4)
    got_stats = jax.tree.map(lambda a: a[0], state["batch_stats"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 got_stats, ref_state["batch_stats"])


# ------------------------------------------------------------ FaceNet Inception-ResNet-v1


@pytest.mark.slow
def test_inception_resnet_v1_shapes_names_and_size():
    from bt_jax.models.inception_resnet import inception_resnet_v1, tiny_inception_resnet

    variables, shape = _shapes(inception_resnet_v1(), 160)
    assert shape == (2, 512)
    params = variables["params"]
    # The graph's 23,469,414 constants less 49 structural ones, plus a BatchNorm scale per
    # channel of the 111 branch convolutions (FaceNet trained without one).
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert n_params == 23_482_624
    assert {k for k in params if k.startswith("block")} == (
        {f"block35_{i}" for i in range(1, 6)} | {f"block17_{i}" for i in range(1, 11)}
        | {f"block8_{i}" for i in range(1, 6)})
    branch = params["block17_3"]["Branch_1"]["Conv2d_0b_1x7"]
    assert branch["conv"]["kernel"].shape == (1, 7, 128, 128) and "bias" not in branch["conv"]
    assert params["block17_3"]["Conv2d_1x1"]["bias"].shape == (896,)  # up-projection bias
    assert params["Bottleneck"]["dense"]["kernel"].shape == (1792, 512)
    assert "Branch_2" not in params["Mixed_6a"]  # the max-pool branch has no weights
    _, pooled = _shapes(inception_resnet_v1(output="pooled"), 160)
    assert pooled == (2, 1792)
    _, tiny = _shapes(tiny_inception_resnet(), 75)  # the smallest input it accepts
    assert tiny == (2, 32)
    with pytest.raises(ValueError, match="at least 7x7, from 75x75"):
        _shapes(tiny_inception_resnet(), 74)


def test_inception_residual_scale_and_last_block_without_relu():
    """Zeroing every up-projection leaves each block the identity (+ReLU), except that
    the final Block8 can pass negative values, which a ReLU would remove."""
    from bt_jax.models.inception_resnet import ResidualBlock

    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    branches = ((("Conv2d_1x1", 4, (1, 1), 1, "SAME"),),)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 6))
    for activate in (True, False):
        block = ResidualBlock(branches, 0.17, activate, conv, norm)
        v = block.init(jax.random.key(1), x)
        up = v["params"]["Conv2d_1x1"]
        zero = jax.tree.map(jnp.zeros_like, up)
        out = block.apply({**v, "params": {**v["params"], "Conv2d_1x1": zero}}, x)
        np.testing.assert_allclose(out, jax.nn.relu(x) if activate else x)
        # scale multiplies the up-projection: bias b gives x + 0.17 * b
        bias = {**zero, "bias": jnp.ones(6)}
        out = block.apply({**v, "params": {**v["params"], "Conv2d_1x1": bias}}, x)
        expected = x + 0.17
        np.testing.assert_allclose(out, jax.nn.relu(expected) if activate else expected,
                                   rtol=1e-6)
