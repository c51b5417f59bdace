"""bt_jax.models.ops: bf16 1x1 convolutions, dense layers and strided convolutions' forward
passes as f32-accumulated products.

Known answers: the same layer in float32 on the bf16-rounded values (what the products
accumulate), and the unchanged ``lax`` result wherever the layer is not rerouted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from bt_jax.models import ops
from bt_jax.models.inception_resnet import tiny_inception_resnet
from bt_jax.models.resnet import tiny_resnet

BF16, F32 = jnp.bfloat16, jnp.float32
NHWC = ("NHWC", "HWIO", "NHWC")


def _rounded(shape, seed):
    """Random values that bf16 holds exactly, as float32."""
    return jax.random.normal(jax.random.PRNGKey(seed), shape).astype(BF16).astype(F32)


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _primitives(fn, *args):
    return {str(e.primitive) for e in jax.make_jaxpr(fn)(*args).eqns}


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "VALID"),
                                             ((2, 2), "SAME"), ((1, 1), ((0, 0), (0, 0)))])
def test_bf16_pointwise_conv_matches_the_f32_convolution_with_gradients(strides, padding):
    x, w = _rounded((2, 7, 9, 16), 0), _rounded((1, 1, 16, 24), 1)

    def loss(conv, dtype):
        def f(x, w):
            y = conv(x.astype(dtype), w.astype(dtype), strides, padding,
                     dimension_numbers=NHWC)
            return jnp.sum(jnp.sin(y.astype(F32)))
        return f

    ours, ref = loss(ops.conv_general_dilated, BF16), loss(lax.conv_general_dilated, F32)
    y = ops.conv_general_dilated(x.astype(BF16), w.astype(BF16), strides, padding,
                                 dimension_numbers=NHWC)
    y_ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    assert y.dtype == BF16 and y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-2
    for g, g_ref in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        assert g.shape == g_ref.shape and _rel(g, g_ref) < 2e-2
    # Rerouted: a product with a float32 result, forward and backward, and no convolution.
    grad_prims = _primitives(jax.grad(ours, (0, 1)), x, w)
    assert "conv_general_dilated" not in grad_prims and "custom_vjp_call" in grad_prims


def test_bf16_matmul_backward_multiplies_bf16_operands_into_f32():
    x, w = _rounded((5, 8), 2).astype(BF16), _rounded((8, 3), 3).astype(BF16)
    dots = [e for e in jax.make_jaxpr(lambda g: ops._matmul_backward((x, w), g))(
        jnp.ones((5, 3), F32)).eqns if str(e.primitive) == "dot_general"]
    assert len(dots) == 2
    for e in dots:
        assert all(v.aval.dtype == BF16 for v in e.invars)
        assert e.params["preferred_element_type"] == F32
    dx, dw = jax.grad(lambda x, w: jnp.sum(ops.bf16_matmul(x, w).astype(F32) ** 2), (0, 1))(x, w)
    xf, wf = x.astype(F32), w.astype(F32)
    dx_ref, dw_ref = jax.grad(lambda x, w: jnp.sum((x @ w) ** 2), (0, 1))(xf, wf)
    assert dx.dtype == dw.dtype == BF16
    assert _rel(dx, dx_ref) < 2e-2 and _rel(dw, dw_ref) < 2e-2


@pytest.mark.parametrize("case", ["float32", "3x3", "grouped", "dilated", "padded"])
def test_other_convolutions_are_lax_unchanged(case):
    dtype = F32 if case == "float32" else BF16
    kernel = (3, 3) if case == "3x3" else (1, 1)
    groups = 2 if case == "grouped" else 1
    x = _rounded((2, 6, 6, 8), 4).astype(dtype)
    w = _rounded(kernel + (8 // groups, 4), 5).astype(dtype)
    kwargs = dict(dimension_numbers=NHWC, feature_group_count=groups,
                  rhs_dilation=(2, 2) if case == "dilated" else None)
    padding = ((1, 1), (1, 1)) if case == "padded" else "SAME"
    got = ops.conv_general_dilated(x, w, (1, 1), padding, **kwargs)
    want = lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    assert "conv_general_dilated" in _primitives(
        lambda x, w: ops.conv_general_dilated(x, w, (1, 1), padding, **kwargs), x, w)


@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3), (2, 2), "VALID"),             # Inception-ResNet-v1's reductions
    ((3, 3), (2, 2), "SAME"),
    ((2, 3), (2, 1), ((1, 0), (0, 2))),    # uneven window, stride and pads
])
def test_strided_bf16_conv_runs_as_taps_with_laxs_own_gradients(kernel, strides, padding):
    x = _rounded((2, 9, 8, ops.PATCH_MIN_CHANNELS), 11).astype(BF16)
    w = _rounded(kernel + (ops.PATCH_MIN_CHANNELS, 8), 12).astype(BF16) / 8

    def linear(conv):
        # A fixed cotangent: both paths' gradients must then agree bit for bit.
        def f(x, w):
            y = conv(x, w, strides, padding, dimension_numbers=NHWC)
            return jnp.sum(y.astype(F32) * jnp.cos(jnp.arange(y.size, dtype=F32)).reshape(
                y.shape))
        return f

    got = ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    want = lax.conv_general_dilated(x.astype(F32), w.astype(F32), strides, padding,
                                    dimension_numbers=NHWC)
    assert got.dtype == BF16 and got.shape == want.shape
    assert _rel(got, want) < 1e-2
    ours = jax.grad(linear(ops.conv_general_dilated), (0, 1))(x, w)
    theirs = jax.grad(linear(lax.conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        assert a.dtype == BF16
        np.testing.assert_array_equal(np.asarray(a, F32), np.asarray(b, F32))
    assert "conv_general_dilated" not in _primitives(
        lambda x, w: ops.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC),
        x, w)


@pytest.mark.parametrize("case", ["float32", "few channels", "stride 1"])
def test_strided_taps_leave_other_convolutions_to_lax(case):
    channels = 3 if case == "few channels" else ops.PATCH_MIN_CHANNELS
    dtype = F32 if case == "float32" else BF16
    strides = (1, 1) if case == "stride 1" else (2, 2)
    x = _rounded((1, 7, 7, channels), 13).astype(dtype)
    w = _rounded((3, 3, channels, 4), 14).astype(dtype)
    got = ops.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC)
    want = lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC)
    np.testing.assert_array_equal(np.asarray(got, F32), np.asarray(want, F32))
    assert "conv_general_dilated" in _primitives(
        lambda x, w: ops.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC),
        x, w)


def test_dense_layer_in_bf16_is_rerouted_and_float32_is_not():
    x = _rounded((4, 32), 6)
    for dtype, rerouted in ((BF16, True), (F32, False)):
        layer = nn.Dense(16, use_bias=False, dtype=dtype, dot_general=ops.dot_general)
        plain = nn.Dense(16, use_bias=False, dtype=dtype)
        params = plain.init(jax.random.PRNGKey(0), x)
        got, want = layer.apply(params, x), plain.apply(params, x)
        assert got.dtype == want.dtype == dtype
        if rerouted:
            assert _rel(got, want) < 1e-2
            assert "custom_vjp_call" in _primitives(lambda p: layer.apply(p, x), params)
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("make,size", [(tiny_inception_resnet, 80), (tiny_resnet, 64)])
@pytest.mark.slow
def test_models_in_bf16_keep_their_parameters_and_stay_close_to_float32(make, size):
    x = jax.random.uniform(jax.random.PRNGKey(7), (2, size, size, 3))
    f32, bf16 = make(dtype=F32), make(dtype=BF16)
    variables = jax.jit(f32.init)(jax.random.PRNGKey(0), x)
    shapes = jax.tree.map(jnp.shape, variables)
    abstract = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, abstract) == shapes
    # bfloat16 compute, float32 parameters (what the optimizer updates).
    assert {p.dtype for p in jax.tree.leaves(abstract["params"])} == {jnp.dtype(F32)}
    want, got = jax.jit(f32.apply)(variables, x), jax.jit(bf16.apply)(variables, x)
    assert got.dtype == BF16 and _rel(got, want) < 0.1
    assert "custom_vjp_call" in str(jax.make_jaxpr(bf16.apply)(variables, x))


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 15, 15, 8), (3, 3), (2, 2), "VALID"),           # Inception-ResNet-v1's pools
    ((2, 12, 12, 8), (3, 3), (2, 2), ((0, 1), (0, 1))),  # ResNet's ceil-mode stem pool
    ((2, 9, 11, 4), (3, 3), (1, 1), "SAME"),
    ((1, 10, 7, 3), (2, 3), (2, 1), "VALID"),
])
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_max_pool_equals_flax_with_the_first_maximum_taking_the_gradient(
        shape, window, strides, padding, dtype):
    # Small integers tie often: the gradient must go to the same tap as lax's
    # select-and-scatter (the first maximum in row-major order), not be split.
    x = jnp.round(2 * jax.random.normal(jax.random.PRNGKey(3), shape)).astype(dtype)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x, window, strides, padding).astype(F32)))

    y, y_ref = ops.max_pool(x, window, strides, padding), nn.max_pool(x, window, strides, padding)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    g, g_ref = jax.grad(loss(ops.max_pool))(x), jax.grad(loss(nn.max_pool))(x)
    g, g_ref = np.asarray(g, np.float32), np.asarray(g_ref, np.float32)
    assert jax.grad(loss(ops.max_pool))(x).dtype == dtype
    np.testing.assert_array_equal(g != 0, g_ref != 0)  # the same taps took the gradient
    if dtype == F32:
        np.testing.assert_array_equal(g, g_ref)
    else:
        # Where windows overlap, lax sums in bf16 step by step; ops sums in f32, rounds once.
        np.testing.assert_allclose(g, g_ref, rtol=2 ** -7)
    assert "select_and_scatter_add" not in str(jax.make_jaxpr(jax.grad(loss(ops.max_pool)))(x))


def test_max_pool_propagates_nan_with_and_without_a_gradient_like_flax():
    x = jnp.arange(2 * 5 * 5 * 1, dtype=F32).reshape(2, 5, 5, 1).at[0, 2, 2, 0].set(jnp.nan)
    want = np.isnan(np.asarray(nn.max_pool(x, (3, 3), (2, 2), "VALID")))
    assert want.any() and not want.all()
    plain = ops.max_pool(x, (3, 3), (2, 2), "VALID")
    traced = jax.vjp(lambda x: ops.max_pool(x, (3, 3), (2, 2), "VALID"), x)[0]
    for y in (plain, traced):
        np.testing.assert_array_equal(np.isnan(np.asarray(y)), want)


def test_max_pool_gradient_of_a_window_of_equal_values_goes_to_its_first_tap():
    x = jnp.zeros((1, 3, 3, 1))
    g = jax.grad(lambda x: jnp.sum(ops.max_pool(x, (3, 3), (1, 1), "VALID")))(x)
    want = np.zeros((1, 3, 3, 1), np.float32)
    want[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(np.asarray(g), want)
