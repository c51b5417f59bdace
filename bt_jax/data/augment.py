"""Image augmentations and a synthetic-mask augmentation, on the device.

``augment(rng, images, cfg, view=...)`` runs inside the train step: uint8
(B, H, W, 3) in, float32 in 0..255 out. By default it applies the simple options
of ``config.augment`` (zoom crop, flip, brightness, contrast, grayscale). With
``cfg.barlow_twins`` it applies the paper's recipe instead (Zbontar et al. 2021,
after BYOL): random resized crop, horizontal flip, colour jitter, grayscale,
Gaussian blur and solarization, blur and solarization with different odds per view.
With ``cfg.mask_prob > 0`` the second view (``view=1``) gets a synthetic face
mask first, with that probability, so a pair shows the same face with and
without a mask: data without masks then trains the same invariance as MLFW.

Why on the device rather than in host workers: the host's few cores already
spend their time decoding JPEGs (see ``pipeline.py``), while these are a few
elementwise passes over a batch, negligible next to a ResNet-50 step on an
accelerator; the randomness comes from the step's key, so it is reproducible
whatever the number of decode workers; and the crop can resample straight from
the stored size to the model's size (``out_size``) in one pass.

The masks come from ``bt_jax.data.masks``, placed in the frame of
112x112-aligned faces (eyes near row 52, mouth near row 92, as in MLFW and
ArcFace crops), rendered once per image size into a bank of premultiplied
colour + alpha layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.data import masks


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The Barlow Twins augmentation settings; per-view pairs are (view 0, view 1)."""
    crop_area: tuple = (0.08, 1.0)        # fraction of the image area kept by the crop
    crop_ratio: tuple = (3 / 4, 4 / 3)    # aspect ratio range of the crop
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: tuple = (1.0, 0.1)
    blur_sigma: tuple = (0.1, 2.0)        # in pixels of a 224-pixel image; scaled to out_size
    solarize_prob: tuple = (0.0, 0.2)


BARLOW_TWINS = Recipe()
MASK_BANK_SIZE = 24
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


# --------------------------------------------------------------------- masks


@functools.lru_cache(maxsize=4)
def mask_bank(size: int, count: int = MASK_BANK_SIZE, seed: int = 0) -> np.ndarray:
    """float32 (count, size, size, 4): premultiplied RGB and alpha of ``count`` masks
    (``masks.mask_layer``), the three kinds in turn."""
    bank = [masks.mask_layer(masks.sample_mask(seed, k, 1, 1 + k % 3), size)
            for k in range(count)]
    return np.clip(np.stack(bank), 0.0, 1.0).astype(np.float32)


def _put_mask(key, image, bank, prob):
    """With probability ``prob``, one mask of ``bank`` over ``image`` (float, 0..1)."""
    k_apply, k_pick, k_tone = jax.random.split(key, 3)
    layer = bank[jax.random.randint(k_pick, (), 0, bank.shape[0])]
    # Lighting varies between photos: scale the mask's colour a little.
    tone = jax.random.uniform(k_tone, (), minval=0.75, maxval=1.15)
    alpha = layer[..., 3:]
    masked = jnp.clip(image * (1.0 - alpha) + layer[..., :3] * tone, 0.0, 1.0)
    return jnp.where(jax.random.bernoulli(k_apply, prob), masked, image)


# ------------------------------------------------------------- Barlow Twins


def random_resized_crop(key, image, out_size: int, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random crop of ``area`` x the image area and aspect ``ratio``, resized to out_size.

    torchvision retries out-of-bounds crops; clipping the sides instead keeps one
    static shape under jit, at the price of slightly squarer extreme crops.
    """
    h, w = image.shape[:2]
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    target = jax.random.uniform(k_area, (), minval=area[0], maxval=area[1]) * h * w
    aspect = jnp.exp(jax.random.uniform(k_ratio, (), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    ch = jnp.clip(jnp.sqrt(target / aspect), 1.0, h)
    cw = jnp.clip(jnp.sqrt(target * aspect), 1.0, w)
    y0 = jax.random.uniform(k_y, ()) * (h - ch)
    x0 = jax.random.uniform(k_x, ()) * (w - cw)
    scale = jnp.stack([out_size / ch, out_size / cw])
    return jax.image.scale_and_translate(image, (out_size, out_size, 3), (0, 1), scale,
                                         -jnp.stack([y0, x0]) * scale, "linear")


def _gray(image):
    return jnp.repeat((image @ _GRAY)[..., None], 3, axis=-1)


def hue_shift(image, turn):
    """torchvision's ``adjust_hue``: ``turn`` (in [-0.5, 0.5]) added to the HSV hue, wrapping.

    dm-pix's conversion matches torchvision's HSV definition; its brightness,
    contrast and saturation follow tf.image instead (additive brightness,
    per-channel contrast mean, HSV saturation), hence only the hue comes from it.
    """
    return pix.adjust_hue(image, turn)


def colour_jitter(key, image, recipe: Recipe = BARLOW_TWINS):
    """Brightness, contrast, saturation and hue, each by a random factor, clipped to 0..1.

    Each as torchvision's ColorJitter defines it (the reference recipe's), applied
    in that fixed order rather than torchvision's random one.
    """
    kb, kc, ks, kh = jax.random.split(key, 4)

    def factor(k, amount):
        return jax.random.uniform(k, (), minval=1 - amount, maxval=1 + amount)

    x = jnp.clip(image * factor(kb, recipe.brightness), 0, 1)
    mean = (x @ _GRAY).mean()
    x = jnp.clip((x - mean) * factor(kc, recipe.contrast) + mean, 0, 1)
    gray = _gray(x)
    x = jnp.clip(gray + (x - gray) * factor(ks, recipe.saturation), 0, 1)
    turn = jax.random.uniform(kh, (), minval=-recipe.hue, maxval=recipe.hue)
    return jnp.clip(hue_shift(x, turn), 0, 1)


def gaussian_blur(image, sigma, radius: int):
    """Separable Gaussian blur (reflect padding) with a traced ``sigma``, static ``radius``."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h, w = image.shape[:2]
    x = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    x = sum(kernel[i] * x[:, i:i + w] for i in range(2 * radius + 1))
    return sum(kernel[i] * x[i:i + h] for i in range(2 * radius + 1))


def barlow_twins_one(key, image, view: int, out_size: int, recipe: Recipe = BARLOW_TWINS):
    """The recipe on one float image in 0..1 -> (out_size, out_size, 3) in 0..1."""
    keys = jax.random.split(key, 8)
    x = random_resized_crop(keys[0], image, out_size, recipe.crop_area, recipe.crop_ratio)
    x = jnp.where(jax.random.bernoulli(keys[1], recipe.flip_prob), x[:, ::-1], x)
    x = jnp.where(jax.random.bernoulli(keys[2], recipe.jitter_prob),
                  colour_jitter(keys[3], x, recipe), x)
    x = jnp.where(jax.random.bernoulli(keys[4], recipe.gray_prob), _gray(x), x)
    scale = out_size / 224
    sigma = jax.random.uniform(keys[5], (), minval=recipe.blur_sigma[0] * scale,
                               maxval=recipe.blur_sigma[1] * scale)
    radius = max(1, math.ceil(3 * recipe.blur_sigma[1] * scale))
    x = jnp.where(jax.random.bernoulli(keys[6], recipe.blur_prob[view]),
                  gaussian_blur(x, sigma, radius), x)
    x = jnp.where(jax.random.bernoulli(keys[7], recipe.solarize_prob[view]),
                  jnp.where(x >= 0.5, 1.0 - x, x), x)
    return jnp.clip(x, 0.0, 1.0)


# -------------------------------------------------------------------- simple


def _simple_one(rng, image, cfg):
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


def simple_augment(rng, images, cfg):
    """The simple options of ``cfg`` on each image: 0..255 (B, H, W, 3) in, float32 0..255 out.

    Input and output in 0..255 with the rescaling inside: the recorded results
    depend on these exact float operations.
    """
    x = images.astype(jnp.float32) / 255.0
    keys = jax.random.split(rng, x.shape[0])
    return jax.vmap(lambda k, im: _simple_one(k, im, cfg))(keys, x) * 255.0


# ------------------------------------------------------------------ the step


def augment(rng, images, cfg, *, view: int = 0, out_size: int | None = None):
    """uint8 (B, H, W, 3) -> float32 0..255 (B, S, S, 3), one view of a pair.

    ``cfg`` is ``config.augment``: ``barlow_twins`` picks the paper's recipe over
    the simple options, ``mask_prob`` masks view 1. ``out_size`` (default H) lets
    the host ship images at their stored size and the device resize them.
    """
    if view not in (0, 1):
        raise ValueError(f"view must be 0 or 1, got {view}")
    size = images.shape[1]
    out_size = out_size or size
    x = images.astype(jnp.float32) / 255.0
    k_mask, k_aug = jax.random.split(rng)
    mask_prob = float(cfg.get("mask_prob", 0.0))
    if mask_prob > 0 and view == 1:
        bank = jnp.asarray(mask_bank(size))
        keys = jax.random.split(k_mask, x.shape[0])
        x = jax.vmap(lambda k, im: _put_mask(k, im, bank, mask_prob))(keys, x)
    if cfg.get("barlow_twins", False):
        recipe = dataclasses.replace(
            BARLOW_TWINS, crop_area=(cfg.get("crop_area_min", BARLOW_TWINS.crop_area[0]), 1.0))
        keys = jax.random.split(k_aug, x.shape[0])
        x = jax.vmap(lambda k, im: barlow_twins_one(k, im, view, out_size, recipe))(keys, x)
        return x * 255.0
    if out_size != size:
        x = jax.image.resize(x, (x.shape[0], out_size, out_size, 3), "linear")
    return simple_augment(k_aug, x * 255.0, cfg)
