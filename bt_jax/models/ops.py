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


def _pointwise(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count) -> bool:
    """Is this an NHWC 1x1 convolution with no padding, dilation or groups?"""
    if lhs.ndim != 4 or rhs.shape[:2] != (1, 1) or not _both_bf16(lhs, rhs):
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if not (_ones(lhs_dilation) and _ones(rhs_dilation) and _no_padding(padding)):
        return False
    wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return given == wanted


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, with bf16 1x1 convolutions as ``bf16_matmul``."""
    if preferred_element_type is None and _pointwise(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count):
        sh, sw = window_strides
        return bf16_matmul(lhs[:, ::sh, ::sw, :], rhs[0, 0])
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


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
