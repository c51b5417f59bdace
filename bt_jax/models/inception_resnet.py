"""FaceNet's Inception-ResNet-v1 (Szegedy et al. 2016, as in davidsandberg/facenet), in Flax.

The layout follows the frozen graphs of FaceNet 20180408-102900 (CASIA-WebFace) and
20180402-114759 (VGGFace2): a stem of seven convolutions, 5 x block35 (residual scale
0.17), reduction A (``Mixed_6a``), 10 x block17 (0.10), reduction B (``Mixed_7a``),
5 x block8 (0.20), a last ``Block8`` without ReLU (scale 1), a global mean pool and the
512-d ``Bottleneck`` (a linear layer without bias, then BatchNorm).

Module names are the graph's TF-slim scopes with the ``Repeat*/`` level dropped, so
``InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights`` is
``block17_3/Branch_1/Conv2d_0b_1x7/conv/kernel`` here. Every branch convolution is
followed by BatchNorm (no scale in the original; here a scale initialised to 1, so that
the BN of a folded graph can be recalibrated) and ReLU; each block's 1x1 up-projection has
a real bias and no BN. Stride-1 convolutions use SAME padding except where the graph's
stem says VALID; stride-2 convolutions and max-pools are VALID.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import ops
from bt_jax.models.norm import batch_norm

ModuleDef = Callable[..., nn.Module]

# TF-slim's batch_norm in FaceNet: epsilon 0.001. Flax momentum 0.9 is PyTorch's 0.1, as
# for the ResNet; FaceNet trained with 0.995, slower than fine-tuning runs want.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.9
EMBEDDING_SIZE = 512

# One convolution of a branch: (scope name, output channels, (kh, kw), stride, padding).
Layer = Tuple[str, int, Tuple[int, int], int, str]


def _layer(name: str, channels: int, kernel: Tuple[int, int], stride: int = 1,
           padding: Optional[str] = None) -> Layer:
    return (name, channels, kernel, stride, padding or ("SAME" if stride == 1 else "VALID"))


class ConvBN(nn.Module):
    """TF-slim ``conv2d`` with BatchNorm and ReLU: ``conv/kernel`` and ``BatchNorm/*``."""

    features: int
    kernel: Tuple[int, int]
    strides: int
    padding: str
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, self.kernel, strides=self.strides, padding=self.padding,
                      name="conv")(x)
        return nn.relu(self.norm(name="BatchNorm")(x))


class Branch(nn.Module):
    """A chain of ConvBN layers: one ``Branch_k`` scope of a block."""

    layers: Sequence[Layer]
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        for name, channels, kernel, stride, padding in self.layers:
            x = ConvBN(channels, kernel, stride, padding, self.conv, self.norm, name=name)(x)
        return x


def _branches(x, specs, conv, norm):
    return [Branch(layers, conv, norm, name=f"Branch_{k}")(x) for k, layers in enumerate(specs)]


class ResidualBlock(nn.Module):
    """block35 / block17 / block8: branches, concat, 1x1 up-projection with bias, then
    ``x + scale * up`` and (except in the last block) ReLU."""

    branches: Sequence[Sequence[Layer]]
    scale: float
    activate: bool
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        mixed = jnp.concatenate(_branches(x, self.branches, self.conv, self.norm), axis=-1)
        up = self.conv(x.shape[-1], (1, 1), use_bias=True, name="Conv2d_1x1")(mixed)
        x = x + self.scale * up
        return nn.relu(x) if self.activate else x


class Reduction(nn.Module):
    """Mixed_6a / Mixed_7a: strided branches beside a 3x3/2 VALID max-pool, concatenated."""

    branches: Sequence[Sequence[Layer]]
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        pooled = ops.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        return jnp.concatenate(_branches(x, self.branches, self.conv, self.norm) + [pooled],
                               axis=-1)


class DenseBN(nn.Module):
    """TF-slim ``fully_connected`` without bias, with BatchNorm: ``dense/kernel``,
    ``BatchNorm/*`` (the FaceNet ``Bottleneck``)."""

    features: int
    dtype: Any
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features, use_bias=False, dtype=self.dtype,
                     dot_general=ops.dot_general, name="dense")(x)
        return self.norm(name="BatchNorm")(x)


class InceptionResNetV1(nn.Module):
    """FaceNet backbone. Returns the ``Bottleneck`` embedding (N, embedding_size), not
    L2-normalised (the graph's last op; cosine 1-NN does not need it), or with
    ``output='pooled'`` the mean-pooled (N, 1792 / width_div) features before it.

    ``width_div`` divides every channel count and ``repeats`` sets the blocks per stage:
    (1, 1) and (1, 1, 1) give a tiny variant for tests from the same code.

    ``stop_after`` / ``start_after`` name a layer (see :meth:`layer_names`) to split the
    network at: the first returns that layer's activations, the second takes them as its
    input and runs the rest. A frozen trunk and a trainable head are these two halves, and
    the head's parameters are a sub-tree of the whole network's, under the same names.
    """

    repeats: Sequence[int] = (5, 10, 5)
    width_div: int = 1
    embedding_size: int = EMBEDDING_SIZE
    scales: Sequence[float] = (0.17, 0.10, 0.20)
    output: str = "bottleneck"
    start_after: Optional[str] = None
    stop_after: Optional[str] = None
    frozen_bn: bool = False  # BatchNorm uses its running statistics in training too
    # Recompute each block's activations in the backward pass instead of keeping them:
    # the same function and gradients, more compute. On FaceNet it saved no memory (each
    # block's residual input dominates and is kept either way: docs/results.md).
    remat: bool = False
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None

    def _c(self, channels: int) -> int:
        return max(1, channels // self.width_div)

    def _layers(self):
        """(name, kind, arguments) of every layer in order."""
        stem = [_layer("Conv2d_1a_3x3", 32, (3, 3), 2), _layer("Conv2d_2a_3x3", 32, (3, 3), 1,
                                                                "VALID"),
                _layer("Conv2d_2b_3x3", 64, (3, 3))]
        tail = [_layer("Conv2d_3b_1x1", 80, (1, 1), 1, "VALID"),
                _layer("Conv2d_4a_3x3", 192, (3, 3), 1, "VALID"),
                _layer("Conv2d_4b_3x3", 256, (3, 3), 2)]
        layers = [(spec[0], "conv", spec) for spec in stem]
        layers.append(("MaxPool_3a_3x3", "max_pool", None))
        layers += [(spec[0], "conv", spec) for spec in tail]
        stages = (("block35", self._block35()), ("block17", self._block17()),
                  ("block8", self._block8()))
        reductions = (("Mixed_6a", self._mixed_6a()), ("Mixed_7a", self._mixed_7a()))
        for stage, ((name, branches), repeats, scale) in enumerate(
                zip(stages, self.repeats, self.scales)):
            layers += [(f"{name}_{i + 1}", "block", (branches, scale, True))
                       for i in range(repeats)]
            if stage < 2:
                layers.append((reductions[stage][0], "reduction", reductions[stage][1]))
        layers.append(("Block8", "block", (self._block8(), 1.0, False)))
        layers.append(("AvgPool_1a_8x8", "mean_pool", None))
        layers.append(("Bottleneck", "bottleneck", None))
        return layers

    def layer_names(self):
        return [name for name, _, _ in self._layers()]

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.output not in ("bottleneck", "pooled"):
            raise ValueError(f"InceptionResNetV1.output={self.output!r}: use 'bottleneck' "
                             "or 'pooled'.")
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 conv_general_dilated=ops.conv_general_dilated)
        norm = batch_norm(train=train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          dtype=self.dtype, axis_name=self.axis_name, frozen=self.frozen_bn)
        layers = self._layers()
        names = [name for name, _, _ in layers]
        first = names.index(self.start_after) + 1 if self.start_after else 0
        last = names.index("AvgPool_1a_8x8" if self.output == "pooled" else "Bottleneck")
        if self.stop_after:
            last = min(last, names.index(self.stop_after))
        x = x.astype(self.dtype)
        for name, kind, args in layers[first:last + 1]:
            x = self._apply_layer(x, name, kind, args, conv, norm)
        return x

    def _apply_layer(self, x, name, kind, args, conv, norm):
        if kind == "conv":
            _, channels, kernel, stride, padding = args
            x = ConvBN(self._c(channels), kernel, stride, padding, conv, norm, name=name)(x)
            return self._check_size(x) if name == "Conv2d_4b_3x3" else x
        if kind == "max_pool":
            return ops.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        if kind == "block":
            block = nn.remat(ResidualBlock) if self.remat else ResidualBlock
            return block(*args, conv, norm, name=name)(x)
        if kind == "reduction":
            reduction = nn.remat(Reduction) if self.remat else Reduction
            return reduction(args, conv, norm, name=name)(x)
        if kind == "mean_pool":
            return jnp.mean(x, axis=(1, 2))  # the graph's AvgPool over the whole final map
        return DenseBN(self.embedding_size, self.dtype, norm, name=name)(x)

    def _check_size(self, x):
        # Mixed_6a and Mixed_7a each need a 3x3 window at stride 2.
        if min(x.shape[1:3]) < 7:
            raise ValueError(
                f"InceptionResNetV1: the stem leaves a {x.shape[1]}x{x.shape[2]} map, too small "
                "for the two reductions (at least 7x7, from 75x75 input images); use a larger "
                "config.data.image_size (FaceNet was trained at 160).")
        return x

    def _block35(self):
        c = self._c
        return ((_layer("Conv2d_1x1", c(32), (1, 1)),),
                (_layer("Conv2d_0a_1x1", c(32), (1, 1)), _layer("Conv2d_0b_3x3", c(32), (3, 3))),
                (_layer("Conv2d_0a_1x1", c(32), (1, 1)), _layer("Conv2d_0b_3x3", c(32), (3, 3)),
                 _layer("Conv2d_0c_3x3", c(32), (3, 3))))

    def _block17(self):
        c = self._c
        return ((_layer("Conv2d_1x1", c(128), (1, 1)),),
                (_layer("Conv2d_0a_1x1", c(128), (1, 1)), _layer("Conv2d_0b_1x7", c(128), (1, 7)),
                 _layer("Conv2d_0c_7x1", c(128), (7, 1))))

    def _block8(self):
        c = self._c
        return ((_layer("Conv2d_1x1", c(192), (1, 1)),),
                (_layer("Conv2d_0a_1x1", c(192), (1, 1)), _layer("Conv2d_0b_1x3", c(192), (1, 3)),
                 _layer("Conv2d_0c_3x1", c(192), (3, 1))))

    def _mixed_6a(self):
        c = self._c
        return ((_layer("Conv2d_1a_3x3", c(384), (3, 3), 2),),
                (_layer("Conv2d_0a_1x1", c(192), (1, 1)), _layer("Conv2d_0b_3x3", c(192), (3, 3)),
                 _layer("Conv2d_1a_3x3", c(256), (3, 3), 2)))

    def _mixed_7a(self):
        c = self._c
        return ((_layer("Conv2d_0a_1x1", c(256), (1, 1)), _layer("Conv2d_1a_3x3", c(384), (3, 3), 2)),
                (_layer("Conv2d_0a_1x1", c(256), (1, 1)), _layer("Conv2d_1a_3x3", c(256), (3, 3), 2)),
                (_layer("Conv2d_0a_1x1", c(256), (1, 1)), _layer("Conv2d_0b_3x3", c(256), (3, 3)),
                 _layer("Conv2d_1a_3x3", c(256), (3, 3), 2)))


def inception_resnet_v1(**kwargs) -> InceptionResNetV1:
    """FaceNet's Inception-ResNet-v1: 23.5M parameters, 512-d embedding, trained at 160 px."""
    return InceptionResNetV1(**kwargs)


def tiny_inception_resnet(**kwargs) -> InceptionResNetV1:
    """One block per stage at 1/16 of the width with a 32-d embedding, for tests."""
    kwargs.setdefault("embedding_size", 32)
    return InceptionResNetV1(repeats=(1, 1, 1), width_div=16, **kwargs)
