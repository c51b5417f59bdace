"""MTCNN's three networks (Zhang et al., 2016) in Flax: P-Net, R-Net and O-Net.

The layer names follow the Keras networks of the ``mtcnn`` 1.0.0 package (hyphens dropped),
whose weights weights/mtcnn.py reads. Inputs are NHWC images scaled as (x - 127.5) / 128.

* P-Net is fully convolutional: a 12x12 window gives one cell of its output maps (stride
  2), a face probability and four box offsets.
* R-Net (24x24 patches) and O-Net (48x48, also five landmarks) end in dense layers. Their
  weights were trained on flattened maps in (width, height, channel) order, the layout of
  the original Caffe networks, so the maps are transposed before flattening.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


class PReLU(nn.Module):
    """max(0, x) + alpha * min(0, x), one alpha per channel (``alpha_shape``)."""
    alpha_shape: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.initializers.constant(0.25), self.alpha_shape)
        return jnp.where(x >= 0, x, alpha.astype(self.dtype) * x)


def _conv(features: int, size: int, name: str, dtype) -> nn.Conv:
    return nn.Conv(features, (size, size), padding="VALID", dtype=dtype, name=name)


def _flatten_caffe(x):
    """(n, h, w, c) -> (n, w * h * c), in the order the dense weights expect."""
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Images (n, h, w, 3) -> (box offsets (n, h', w', 4), face probability (n, h', w')).

    ``valid`` (n, 2) masks the first convolution's output beyond each image's real
    height and width: an image padded to a shared shape then gives exactly the cells it
    would give alone (max pooling never sees the padding), so one compiled shape serves
    images of many sizes.
    """
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, valid: Optional[jnp.ndarray] = None):
        x = _conv(10, 3, "conv1", self.dtype)(x.astype(self.dtype))
        x = PReLU((1, 1, 10), self.dtype, name="prelu1")(x)
        if valid is not None:
            rows = jnp.arange(x.shape[1])[None, :, None] < valid[:, 0, None, None] - 2
            cols = jnp.arange(x.shape[2])[None, None, :] < valid[:, 1, None, None] - 2
            x = jnp.where((rows & cols)[..., None], x, -jnp.inf)
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = _conv(16, 3, "conv2", self.dtype)(x)
        x = PReLU((1, 1, 16), self.dtype, name="prelu2")(x)
        x = _conv(32, 3, "conv3", self.dtype)(x)
        x = PReLU((1, 1, 32), self.dtype, name="prelu3")(x)
        offsets = _conv(4, 1, "conv4_1", self.dtype)(x)
        logits = _conv(2, 1, "conv4_2", self.dtype)(x)
        return offsets.astype(jnp.float32), nn.softmax(logits.astype(jnp.float32))[..., 1]


class RNet(nn.Module):
    """24x24 patches (n, 24, 24, 3) -> (box offsets (n, 4), face probability (n,))."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(28, 3, "conv1", self.dtype)(x.astype(self.dtype))
        x = PReLU((1, 1, 28), self.dtype, name="prelu1")(x)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        x = _conv(48, 3, "conv2", self.dtype)(x)
        x = PReLU((1, 1, 48), self.dtype, name="prelu2")(x)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        x = _conv(64, 2, "conv3", self.dtype)(x)
        x = PReLU((1, 1, 64), self.dtype, name="prelu3")(x)
        x = nn.Dense(128, dtype=self.dtype, name="fc4")(_flatten_caffe(x))
        x = PReLU((128,), self.dtype, name="prelu4")(x)
        offsets = nn.Dense(4, dtype=self.dtype, name="fc5_1")(x)
        logits = nn.Dense(2, dtype=self.dtype, name="fc5_2")(x)
        return offsets.astype(jnp.float32), nn.softmax(logits.astype(jnp.float32))[..., 1]


class ONet(nn.Module):
    """48x48 patches (n, 48, 48, 3) -> (box offsets (n, 4), landmarks (n, 10) as five x then
    five y, relative to the box, face probability (n,))."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(32, 3, "conv1", self.dtype)(x.astype(self.dtype))
        x = PReLU((1, 1, 32), self.dtype, name="prelu1")(x)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        x = _conv(64, 3, "conv2", self.dtype)(x)
        x = PReLU((1, 1, 64), self.dtype, name="prelu2")(x)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        x = _conv(64, 3, "conv3", self.dtype)(x)
        x = PReLU((1, 1, 64), self.dtype, name="prelu3")(x)
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = _conv(128, 2, "conv4", self.dtype)(x)
        x = PReLU((1, 1, 128), self.dtype, name="prelu4")(x)
        x = nn.Dense(256, dtype=self.dtype, name="fc5")(_flatten_caffe(x))
        x = PReLU((256,), self.dtype, name="prelu5")(x)
        offsets = nn.Dense(4, dtype=self.dtype, name="fc6_1")(x)
        landmarks = nn.Dense(10, dtype=self.dtype, name="fc6_2")(x)
        logits = nn.Dense(2, dtype=self.dtype, name="fc6_3")(x)
        return (offsets.astype(jnp.float32), landmarks.astype(jnp.float32),
                nn.softmax(logits.astype(jnp.float32))[..., 1])
