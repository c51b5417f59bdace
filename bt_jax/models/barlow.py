"""Projector and the Barlow Twins pair (backbone + projector, shared weights)."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import ops
from bt_jax.models.norm import batch_norm
from bt_jax.models.resnet import BN_EPSILON, BN_MOMENTUM, CaffeResNet


def parse_projector_sizes(spec: str) -> Tuple[int, ...]:
    """'2048-4096-8192' -> (2048, 4096, 8192), with a clear error for bad strings."""
    try:
        sizes = tuple(int(part) for part in str(spec).split("-"))
    except ValueError:
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(
            f"config.model.projector={spec!r} is not a list of positive layer sizes joined by "
            "'-', for example '2048-4096-8192'.")
    return sizes


class Projector(nn.Module):
    """(Linear without bias, BN, ReLU) x (k-1), then a last Linear without bias.

    Layer i is named ``linear{i}``/``bn{i}``: PyTorch's ``projector.{3i}``/``projector.{3i+1}``.
    """

    sizes: Sequence[int]
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                                  dot_general=ops.dot_general)
        norm = batch_norm(train=train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          dtype=self.dtype, axis_name=self.axis_name)
        for i, size in enumerate(self.sizes[:-1]):
            x = nn.relu(norm(name=f"bn{i}")(dense(size, name=f"linear{i}")(x)))
        return dense(self.sizes[-1], name=f"linear{len(self.sizes) - 1}")(x)


class BarlowTwins(nn.Module):
    """Twin networks with shared weights.

    ``__call__(x1, x2)`` runs the two views through separate forward passes, as the
    reference does, so each view's BatchNorm uses its own batch statistics. The final
    affine-free normalisation of the embeddings is part of the loss (see losses.py).
    """

    backbone: CaffeResNet
    projector: Projector

    def __call__(self, x1, x2, train: bool = True):
        return self.embed(x1, train), self.embed(x2, train)

    def embed(self, x, train: bool = False):
        return self.projector(self.backbone(x, train), train)

    def features(self, x, train: bool = False):
        return self.backbone(x, train)
