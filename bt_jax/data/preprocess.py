"""On-device image normalisation (uint8 NHWC in, float32 out); augmentation lives in
``bt_jax.data.augment``."""

from __future__ import annotations

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
