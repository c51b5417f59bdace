"""Aligned face crops from five landmarks, and the photos they come from.

A face is aligned by the similarity transform (rotation, uniform scale, translation) that
takes its five landmarks (or its eyes alone) closest, in least squares, to the
five-point template of 112x112 crops that MLFW's images (and ArcFace-style recognisers)
follow; other crop sizes scale the template. Photos are read with their EXIF orientation
applied, in RGB whatever their mode (greyscale, palette, RGBA).
"""

from __future__ import annotations

import io
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage import transform

# (x, y) of the left eye, right eye, nose tip and mouth corners in a 112x112 crop, left
# and right as seen in the image; pixel centres at integer coordinates.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


# The landmarks a crop can be aligned from (config.detect.align_from): all five, or the
# eyes alone, which a mask leaves visible (docs/detection.md, "Alignment from the eyes").
ALIGN_FROM = {"five": [0, 1, 2, 3, 4], "eyes": [0, 1]}

# Faces whose crop shrinks them below this (crop pixels per photo pixel) are shrunk with
# area averaging before the bilinear warp.
SHRINK_FIRST = 0.8


def template(size: int) -> np.ndarray:
    return TEMPLATE_112 * (size / 112.0)


def check_align_from(align_from: str) -> None:
    if align_from not in ALIGN_FROM:
        raise ValueError(f"config.detect.align_from={align_from!r}: give one of "
                         f"{sorted(ALIGN_FROM)}.")


def similarity(landmarks: np.ndarray, size: int,
               align_from: str = "five") -> transform.SimilarityTransform:
    """The transform from photo pixels to crop pixels for these (5, 2) landmarks, fitted
    to the points ``align_from`` names."""
    check_align_from(align_from)
    used = ALIGN_FROM[align_from]
    tform = transform.SimilarityTransform.from_estimate(
        np.asarray(landmarks, np.float64)[used], template(size)[used])
    if not tform:
        raise ValueError("the landmarks do not fix a similarity transform (they coincide).")
    return tform


def align(photo: np.ndarray, landmarks: np.ndarray, size: int,
          align_from: str = "five") -> np.ndarray:
    """uint8 (size, size, 3) crop of the face with these landmarks (bilinear; outside the
    photo is black, as in MLFW's crops). A face larger than the crop is first shrunk
    with area averaging: bilinear sampling alone would alias it."""
    landmarks = np.asarray(landmarks, np.float64)
    tform = similarity(landmarks, size, align_from)
    if tform.scale < SHRINK_FIRST:
        photo, landmarks = _shrunk(photo, landmarks, tform, size)
        tform = similarity(landmarks, size, align_from)
    crop = transform.warp(photo, tform.inverse, output_shape=(size, size), order=1,
                          mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def _shrunk(photo: np.ndarray, landmarks: np.ndarray, tform, size: int):
    """The part of ``photo`` the crop covers, resized by the transform's scale (box
    filter), and the landmarks in its pixels."""
    corners = tform.inverse(np.array([[0, 0], [size, 0], [size, size], [0, size]], float))
    h, w = photo.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(0)) - 2, 0, [w - 1, h - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(corners.max(0)) + 2, [x0 + 1, y0 + 1], [w, h]).astype(int)
    region = photo[y0:y1, x0:x1]
    new = (max(1, round((x1 - x0) * tform.scale)), max(1, round((y1 - y0) * tform.scale)))
    small = np.asarray(Image.fromarray(region).resize(new, Image.BOX))
    factor = np.array([new[0] / (x1 - x0), new[1] / (y1 - y0)])
    # Pixel centres: photo pixel x sits at (x + 0.5) * factor - 0.5 in the shrunk region.
    return small, (landmarks - [x0, y0] + 0.5) * factor - 0.5


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
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        why = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(f"cannot read image {name}: {why}") from None

