"""The ResNet of the VGGFace2 release (Caffe style), in Flax.

Differences from torchvision's ResNet that the ported weights depend on:
* the stride of a bottleneck sits on its FIRST 1x1 convolution, the 3x3 runs at stride 1;
* the stem max-pool has no padding and uses ceil mode (PyTorch ``ceil_mode=True``);
* the final average pool is a fixed 7x7 window at stride 1, so inputs larger than 224
  leave a spatial map (2x2 at 244) that is flattened in PyTorch's channel-major order.

Layer names mirror the PyTorch ones (``layer3_1/conv2`` is ``layer3.1.conv2``) so that
weight conversion is a renaming plus a transpose.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models import ops
from bt_jax.models.norm import batch_norm

ModuleDef = Callable[..., nn.Module]

# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (the weight on the old running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _max_pool_ceil(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """Max-pool with no padding and PyTorch's ceil mode.

    Ceil mode adds one more output where a partial window remains; padding the high side
    with -inf (what ``nn.max_pool`` pads with) reproduces that exactly.
    """
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        # PyTorch drops a last window that would start entirely inside the padding.
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    return ops.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class Bottleneck(nn.Module):
    """1x1 (strided) -> 3x3 -> 1x1 bottleneck with an optional projection shortcut."""

    width: int
    stride: int
    project: bool
    conv: ModuleDef
    norm: ModuleDef
    expansion: int = 4

    @nn.compact
    def __call__(self, x):
        out = self.conv(self.width, (1, 1), strides=self.stride, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out))
        out = self.conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out))
        out = self.conv(self.width * self.expansion, (1, 1), name="conv3")(out)
        out = self.norm(name="bn3")(out)
        shortcut = x
        if self.project:
            shortcut = self.conv(self.width * self.expansion, (1, 1), strides=self.stride,
                                 name="downsample_conv")(x)
            shortcut = self.norm(name="downsample_bn")(shortcut)
        return nn.relu(out + shortcut)


class CaffeResNet(nn.Module):
    """VGGFace2 ResNet backbone. Returns flattened pooled features (N, C*H*W).

    ``axis_name`` makes BatchNorm average its batch statistics over that device axis in
    training (SyncBatchNorm); leave it None outside pmap/shard_map.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    expansion: int = 4
    pool_window: int = 7
    num_classes: Optional[int] = None
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 conv_general_dilated=ops.conv_general_dilated)
        norm = batch_norm(train=train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          dtype=self.dtype, axis_name=self.axis_name)
        x = x.astype(self.dtype)
        x = conv(self.stem_width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = _max_pool_ceil(x, 3, 2)
        for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(width, stride, project=block == 0, conv=conv, norm=norm,
                               expansion=self.expansion, name=f"layer{stage + 1}_{block}")(x)
        x = self._average_pool(x)
        # PyTorch flattens NCHW; matching its order keeps features and projector weights
        # interchangeable with the reference implementation.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        if self.num_classes:
            x = nn.Dense(self.num_classes, dtype=self.dtype, dot_general=ops.dot_general,
                         name="fc")(x)
        return x

    def _average_pool(self, x):
        if min(x.shape[1:3]) < self.pool_window:
            raise ValueError(
                f"CaffeResNet: the final feature map is {x.shape[1]}x{x.shape[2]}, smaller than "
                f"the {self.pool_window}x{self.pool_window} average pool. Use a larger image "
                f"size or set config.model.pool_window <= {min(x.shape[1:3])}.")
        w = self.pool_window
        return nn.avg_pool(x, (w, w), strides=(1, 1), padding="VALID")

    def feature_dim(self, image_size: int) -> int:
        """Length of the flattened feature vector for square inputs of ``image_size``."""
        size = (image_size + 2 * 3 - 7) // 2 + 1
        size = -(-(size - 3) // 2) + 1
        for stage in range(1, len(self.stage_sizes)):
            size = (size - 1) // 2 + 1
        size = size - self.pool_window + 1
        return self.widths[-1] * self.expansion * size * size


def resnet50(**kwargs) -> CaffeResNet:
    """The VGGFace2 ResNet-50 (layers 3-4-6-3, widths 64-512, expansion 4)."""
    return CaffeResNet(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), **kwargs)


def small_resnet(**kwargs) -> CaffeResNet:
    """A quarter-width one-block-per-stage variant sized for training on a CPU at 112 px
    (310k parameters; 256 features after the global pool)."""
    kwargs.setdefault("pool_window", 4)
    return CaffeResNet(stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16,
                       expansion=2, **kwargs)


def tiny_resnet(**kwargs) -> CaffeResNet:
    """A narrow one-block-per-stage variant from the same code, for tests and the demo."""
    kwargs.setdefault("pool_window", 1)
    return CaffeResNet(stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8,
                       expansion=2, **kwargs)
