"""Barlow Twins loss with the cross-correlation computed over the GLOBAL batch.

Each device holds a slice of the batch. Normalisation statistics and the
cross-correlation matrix are summed over ``axis_name`` with ``lax.psum``, so the loss
on every device equals the single-device loss on the concatenated batch.

Gradients: every device computes the same scalar, and JAX's transpose of ``psum`` sums
the cotangents of all devices, so a device's gradient is ``n_devices`` times the part of
the global gradient that flows through its own examples. Averaging those with ``pmean``
(the exact gradient reducer) therefore yields the gradient of the global loss exactly.
The PyTorch reference all-reduces ``c`` with a non-differentiable ``all_reduce``; each
rank then back-propagates only its own examples' part and DDP averages, which leaves its
gradients at ``1 / world_size`` of the global-loss gradient that bt_jax uses. LARS' trust
ratio makes weight updates insensitive to that scale; bias/BN updates are not.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _global_sum(x, axis_name: Optional[str]):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _normalise(z, weights, count, axis_name, eps):
    """Affine-free BatchNorm over the global batch (biased variance, like PyTorch)."""
    mean = _global_sum(jnp.sum(z * weights, axis=0), axis_name) / count
    centred = z - mean
    var = _global_sum(jnp.sum(jnp.square(centred) * weights, axis=0), axis_name) / count
    return centred * jax.lax.rsqrt(var + eps)


def cross_correlation(z1, z2, *, axis_name: Optional[str] = None, mask=None, eps: float = 1e-5):
    """Global-batch cross-correlation matrix of the normalised embeddings (D x D).

    ``mask`` (per example, 1 = real, 0 = padding) lets evaluation pad the last batch
    instead of dropping it; padded rows contribute nothing.
    """
    z1 = z1.astype(jnp.float32)
    z2 = z2.astype(jnp.float32)
    weights = jnp.ones((z1.shape[0], 1), jnp.float32) if mask is None else \
        mask.astype(jnp.float32).reshape(-1, 1)
    count = _global_sum(jnp.sum(weights), axis_name)
    n1 = _normalise(z1, weights, count, axis_name, eps) * weights
    n2 = _normalise(z2, weights, count, axis_name, eps)
    return _global_sum(n1.T @ n2, axis_name) / count


def barlow_twins_loss(z1, z2, *, lambd: float = 0.0051, axis_name: Optional[str] = None,
                      mask=None, eps: float = 1e-5):
    """L = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2, in float32."""
    c = cross_correlation(z1, z2, axis_name=axis_name, mask=mask, eps=eps)
    diag = jnp.diagonal(c)
    on_diag = jnp.sum(jnp.square(1.0 - diag))
    off_diag = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
    return on_diag + lambd * off_diag
