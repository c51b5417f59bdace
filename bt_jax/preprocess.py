"""On-device image normalisation and augmentation (uint8 NHWC in, float32 out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Each preset: channel order, input scale, mean and std in that order and scale.
NORMALIZATIONS = {
    # The VGGFace2 Caffe weights: BGR, 0-255, mean subtracted, no std scaling.
    "vggface2": dict(bgr=True, scale=1.0, mean=(91.4953, 103.8827, 131.0912), std=(1.0, 1.0, 1.0)),
    # The earlier work's MLFW statistics: RGB / 255, then mean/std.
    "mlfw": dict(bgr=False, scale=1.0 / 255.0, mean=(0.5360, 0.4703, 0.4324),
                 std=(0.2720, 0.2469, 0.2537)),
    # FaceNet (davidsandberg/facenet's fixed_image_standardization): RGB, (x - 127.5) / 128.
    "facenet": dict(bgr=False, scale=1.0, mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0)),
}


def check_normalization(name: str) -> dict:
    if name not in NORMALIZATIONS:
        raise ValueError(f"config.data.normalization={name!r} is unknown; use one of "
                         f"{sorted(NORMALIZATIONS)}.")
    return NORMALIZATIONS[name]


def normalize(images, name: str):
    """uint8 RGB images -> float32 network input for the preset ``name``."""
    preset = check_normalization(name)
    x = images.astype(jnp.float32)
    if preset["bgr"]:
        x = x[..., ::-1]
    mean = np.asarray(preset["mean"], np.float32)
    std = np.asarray(preset["std"], np.float32)
    return (x * preset["scale"] - mean) / std


def _augment_one(rng, image, cfg):
    """Random zoom-crop, flip, brightness/contrast and grayscale on one float image in [0,1]."""
    k_scale, k_shift, k_flip, k_bright, k_contrast, k_gray = jax.random.split(rng, 6)
    size = image.shape[0]
    if cfg.crop_scale > 1.0:
        scale = jax.random.uniform(k_scale, (), minval=1.0, maxval=cfg.crop_scale)
        shift = jax.random.uniform(k_shift, (2,), minval=0.0, maxval=1.0) * size * (1 - scale)
        image = jax.image.scale_and_translate(
            image, image.shape, (0, 1), jnp.stack([scale, scale]), shift, "linear")
    if cfg.flip:
        image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    if cfg.brightness > 0:
        image = image * (1 + jax.random.uniform(k_bright, (), minval=-1, maxval=1) * cfg.brightness)
    if cfg.contrast > 0:
        mean = image.mean()
        factor = 1 + jax.random.uniform(k_contrast, (), minval=-1, maxval=1) * cfg.contrast
        image = (image - mean) * factor + mean
    if cfg.grayscale_prob > 0:
        gray = image @ jnp.asarray([0.299, 0.587, 0.114], image.dtype)
        image = jnp.where(jax.random.bernoulli(k_gray, cfg.grayscale_prob),
                          jnp.repeat(gray[..., None], 3, -1), image)
    return jnp.clip(image, 0.0, 1.0)


def augment(rng, images, cfg):
    """Independent augmentation of each uint8 image; returns uint8-range float32 (0-255)."""
    x = images.astype(jnp.float32) / 255.0
    keys = jax.random.split(rng, x.shape[0])
    return jax.vmap(lambda k, im: _augment_one(k, im, cfg))(keys, x) * 255.0
