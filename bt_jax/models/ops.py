"""Drop-in ``conv_general_dilated`` and ``dot_general`` for Flax layers in bfloat16.

XLA's CPU backend runs a bfloat16 matrix product at the native bf16 rate (AVX-512 BF16,
AMX) only when the product is asked for in float32 (``preferred_element_type``); a bf16
product with a bf16 result, and every bf16 convolution, go through float32 kernels with
conversions around them. Measured ad hoc on a Zen 4 EPYC (2 cores, 2048^3): 250-370
GFLOP/s for bf16 -> f32 products against 165-195 for f32 and bf16 -> bf16 ones; a bf16 1x1
convolution of Inception-ResNet-v1 done as such a product ran its forward and backward
passes 1.8-3.1x faster than the f32 convolution (docs/benchmarks.md has the whole steps).

So in bfloat16, 1x1 convolutions (a third of Inception-ResNet-v1's FLOPs, half of
ResNet-50's) and dense layers become matrix products accumulated in float32, with a custom
gradient that keeps the backward products in the same fast form: JAX's own transpose of a
float32-result product would multiply float32 cotangents. Everything else, and every
float32 layer, calls ``lax`` unchanged, so float32 models compute exactly what they did.
Parameter shapes and names do not change: checkpoints and converted weights are shared.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _product(a, b, contract, out_dtype):
    return lax.dot_general(a, b, (contract, ((), ())),
                           preferred_element_type=jnp.float32).astype(out_dtype)


@jax.custom_vjp
def bf16_matmul(x, w):
    """``x @ w`` over x's last axis for bf16 operands: f32 accumulation, bf16 result."""
    return _product(x, w, ((x.ndim - 1,), (0,)), x.dtype)


def _matmul_forward(x, w):
    return bf16_matmul(x, w), (x, w)


def _matmul_backward(saved, g):
    x, w = saved
    g = g.astype(x.dtype)
    lead = tuple(range(x.ndim - 1))
    dx = _product(g, w, ((g.ndim - 1,), (1,)), x.dtype)
    dw = _product(x, g, (lead, lead), w.dtype)
    return dx, dw


bf16_matmul.defvjp(_matmul_forward, _matmul_backward)


def _both_bf16(x, w) -> bool:
    return x.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16


def _ones(values) -> bool:
    return values is None or all(v == 1 for v in values)


def _no_padding(padding) -> bool:
    # A 1x1 window never needs padding: 'SAME' and 'VALID' both add none.
    return isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding)


def _plain_bf16(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, batch_group_count) -> bool:
    """Is this a bf16 NHWC/HWIO convolution with no dilation or groups?"""
    if lhs.ndim != 4 or not _both_bf16(lhs, rhs):
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if not (_ones(lhs_dilation) and _ones(rhs_dilation)):
        return False
    wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == wanted


def _pointwise(lhs, rhs, strides, padding, *plain) -> bool:
    """Is this a plain bf16 1x1 convolution with no padding?"""
    return rhs.shape[:2] == (1, 1) and _no_padding(padding) and _plain_bf16(lhs, rhs, *plain)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, with bf16 1x1 convolutions as ``bf16_matmul`` and
    strided bf16 ones as ``patch_conv``."""
    if preferred_element_type is None and _pointwise(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count):
        sh, sw = window_strides
        return bf16_matmul(lhs[:, ::sh, ::sw, :], rhs[0, 0])
    if preferred_element_type is None and _strided(
            lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count):
        pads = _window_pads(lhs.shape, rhs.shape[:2], window_strides, padding)
        return patch_conv(lhs, rhs, tuple(window_strides), tuple(pads))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


# Below this many input channels a tap is too narrow a copy for the product to pay for it:
# ResNet-50's 7x7/2 stem on RGB ran 1.14x slower as taps, FaceNet's 3x3/2 one on RGB 0.98x.
PATCH_MIN_CHANNELS = 32


def _strided(lhs, rhs, strides, *plain) -> bool:
    """Is this a plain bf16 convolution at a stride, with a window over at least
    ``PATCH_MIN_CHANNELS`` input channels?"""
    return max(strides) > 1 and _plain_bf16(lhs, rhs, *plain) and \
        rhs.shape[2] >= PATCH_MIN_CHANNELS


def _lax_conv(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def patch_conv(x, w, strides, pads):
    """A strided bf16 convolution's forward pass as one f32-accumulated product of the
    window's taps side by side (im2col); its gradients are XLA's own.

    XLA's CPU convolution is slow at strides: the 3x3/2 layers of Inception-ResNet-v1 ran
    1.1-1.3x faster forward and backward this way (forward alone up to 2x), measured ad hoc
    against XLA's; at stride 1 and for the gradients the taps cost more to copy than the
    product saves (docs/benchmarks.md; scripts/benchmark_convs.py times each layer).
    """
    kh, kw, ci, co = w.shape
    taps = _taps(x, (kh, kw), strides, pads, fill=0)
    return bf16_matmul(jnp.concatenate(taps, axis=-1), w.reshape(kh * kw * ci, co))


def _patch_conv_forward(x, w, strides, pads):
    return patch_conv(x, w, strides, pads), (x, w)


def _patch_conv_backward(strides, pads, saved, g):
    x, w = saved
    _, transpose = jax.vjp(lambda a, b: _lax_conv(a, b, strides, pads), x, w)
    return transpose(g)


patch_conv.defvjp(_patch_conv_forward, _patch_conv_backward)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs):
    """``lax.dot_general``, with a bf16 dense layer's ``x @ W`` as ``bf16_matmul``."""
    (lc, rc), (lb, rb) = dimension_numbers
    dense = (rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
             and not lb and not rb)
    if dense and preferred_element_type is None and not kwargs and _both_bf16(lhs, rhs):
        return bf16_matmul(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


def _window_pads(shape, window, strides, padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads(shape[1:3], window, strides, padding)
    return [tuple(p) for p in padding]


def _taps(x, window, strides, padding, fill=-jnp.inf):
    """The input padded with ``fill``, its window taps as strided slices, in row-major
    order."""
    pads = _window_pads(x.shape, window, strides, padding)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    (kh, kw), (sh, sw) = window, strides
    oh, ow = ((xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1)
    taps = [xp[:, dy:dy + sh * (oh - 1) + 1:sh, dx:dx + sw * (ow - 1) + 1:sw, :]
            for dy in range(kh) for dx in range(kw)]
    return taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    taps = _taps(x, window, strides, padding)
    return functools.reduce(jnp.maximum, taps)


def _first_max(a, b):
    (va, ia), (vb, ib) = a, b
    # Ties go to the lower tap: the first (row-major) maximum keeps the gradient, as
    # XLA's select-and-scatter and PyTorch's indices do. NaN wins, as in lax.max.
    take_a = (va > vb) | ((va == vb) & (ia < ib)) | jnp.isnan(va)
    return jnp.where(take_a, va, vb), jnp.where(take_a, ia, ib)


def _max_pool_forward(x, window, strides, padding):
    taps = _taps(x, window, strides, padding)
    stacked = jnp.stack(taps)
    # One reduction gives the maximum and its tap. As a reduction it stays a separate
    # kernel; an elementwise argmax would be fused into, and recomputed by, every use.
    index = lax.broadcasted_iota(jnp.int32, stacked.shape, 0)
    y, first = lax.reduce((stacked, index), (jnp.array(-jnp.inf, x.dtype), jnp.int32(0)),
                          _first_max, (0,))
    return y, (first, x.shape)


def _max_pool_backward(window, strides, padding, saved, g):
    first, x_shape = saved
    # XLA's CPU loops do bf16 arithmetic through conversions: sum in f32, round once.
    dtype, g = g.dtype, g.astype(jnp.float32)
    (kh, kw), (sh, sw) = window, strides
    n, oh, ow, c = g.shape
    pads = _window_pads(x_shape, window, strides, padding)
    hp, wp = x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1])
    # Phase blocks: enough rows for every input row and every shifted output row.
    hb, wb = max(-(-hp // sh), oh + (kh - 1) // sh), max(-(-wp // sw), ow + (kw - 1) // sw)
    zero = jnp.zeros((), g.dtype)
    dxp = None
    # Input row sh*i + py takes the taps dy = py (mod sh) from output rows i - dy // sh:
    # each phase is a sum of shifted, masked copies of g, spread out by interior padding.
    for py in range(min(sh, kh)):
        for px in range(min(sw, kw)):
            phase = None
            for dy in range(py, kh, sh):
                for dx in range(px, kw, sw):
                    oy, ox = dy // sh, dx // sw
                    part = jnp.where(first == dy * kw + dx, g, zero)
                    part = jnp.pad(part, ((0, 0), (oy, hb - oh - oy), (ox, wb - ow - ox), (0, 0)))
                    phase = part if phase is None else phase + part
            config = [(0, 0, 0), (py, hp - py - sh * (hb - 1) - 1, sh - 1),
                      (px, wp - px - sw * (wb - 1) - 1, sw - 1), (0, 0, 0)]
            spread = lax.pad(phase, zero, config)
            dxp = spread if dxp is None else dxp + spread
    (top, _), (left, _) = pads
    return (dxp[:, top:top + x_shape[1], left:left + x_shape[2], :].astype(dtype),)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding="VALID"):
    """NHWC max-pool like ``flax.linen.max_pool``, with a gradient XLA's CPU backend runs fast.

    XLA's CPU backend expands the select-and-scatter behind a max-pool's gradient into a
    reduce-window over (value, index) tuples that cost ~30 ms of Inception-ResNet-v1's
    step. Here the forward pass keeps the first maximum's tap and the gradient is gathered
    phase by phase from masked, shifted copies of the output gradient.
    """
    if x.ndim != 4 or len(window) != 2 or len(strides) != 2:
        raise ValueError(f"max_pool takes NHWC input and a 2-D window and strides; got input "
                         f"{x.shape}, window {window}, strides {strides}")
    pads = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return _max_pool(x, tuple(window), tuple(strides), pads)
