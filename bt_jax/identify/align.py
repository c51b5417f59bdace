"""Aligned face crops from five landmarks, and the photos they come from.

A face is aligned by the similarity transform (rotation, uniform scale, translation) that
takes its five landmarks closest, in least squares, to the five-point template of 112x112
crops that MLFW's images (and ArcFace-style recognisers) follow; other crop sizes scale
the template. Photos are read with their EXIF orientation applied, in RGB whatever their
mode (greyscale, palette, RGBA).
"""

from __future__ import annotations

import io
import numpy as np
from PIL import Image, ImageOps
from skimage import transform

# (x, y) of the left eye, right eye, nose tip and mouth corners in a 112x112 crop, left
# and right as seen in the image; pixel centres at integer coordinates.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def template(size: int) -> np.ndarray:
    return TEMPLATE_112 * (size / 112.0)


def similarity(landmarks: np.ndarray, size: int) -> transform.SimilarityTransform:
    """The transform from photo pixels to crop pixels for these (5, 2) landmarks."""
    tform = transform.SimilarityTransform()
    if not tform.estimate(np.asarray(landmarks, np.float64), template(size)):
        raise ValueError("the landmarks do not fix a similarity transform (they coincide).")
    return tform


def align(photo: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3) crop of the face with these landmarks (bilinear; outside the
    photo is black, as in MLFW's crops)."""
    tform = similarity(landmarks, size)
    crop = transform.warp(photo, tform.inverse, output_shape=(size, size), order=1,
                          mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def read_photo(data: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> uint8 (h, w, 3) RGB, upright; ValueError naming ``name`` if bad."""
    if not data:
        raise ValueError(f"cannot read image {name}: the file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # Transparent parts on white, not on whatever colour they happen to hold.
                canvas = Image.new("RGB", image.size, (255, 255, 255))
                canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
                image = canvas
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(f"cannot read image {name}: {why}") from None

