"""Photos with known faces: aligned crops pasted into larger canvases, for measuring the
detector and the aligner against the truth.

Each face is a crop of the five-point template (identify/align.py) put on a background
under a random similarity transform (scale, rotation, translation), so its true
landmarks are the template's points mapped through that transform. Faces of a canvas do
not overlap. The background is smooth colour noise with grain, not a photo: it should not
hold faces of its own.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image
from skimage import transform

from bt_jax.identify.align import template


class Placed(NamedTuple):
    """One face on a canvas: which crop, its transform's scale and angle, its landmarks."""
    item: int              # index into the crops given
    scale: float
    angle: float           # degrees
    landmarks: np.ndarray  # (5, 2) in canvas pixels
    corners: np.ndarray    # (4, 2) the crop's corners in canvas pixels
    matrix: np.ndarray     # (3, 3) crop pixels -> canvas pixels


class Composite(NamedTuple):
    image: np.ndarray      # uint8 (height, width, 3)
    faces: List[Placed]


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour noise (a coarse random grid, bicubic) with fine grain on top."""
    coarse = rng.uniform(0, 255, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), float)
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def _transform(scale: float, angle: float, centre: Tuple[float, float],
               size: int) -> transform.SimilarityTransform:
    """Crop pixels -> canvas pixels: about the crop's centre, which lands on ``centre``."""
    to_origin = transform.SimilarityTransform(translation=(-(size - 1) / 2, -(size - 1) / 2))
    turn = transform.SimilarityTransform(scale=scale, rotation=math.radians(angle),
                                         translation=centre)
    return transform.SimilarityTransform(turn.params @ to_origin.params)


def _overlaps(corners: np.ndarray, taken: Sequence[np.ndarray], margin: float) -> bool:
    low, high = corners.min(0) - margin, corners.max(0) + margin
    return any(np.all(low < c.max(0)) and np.all(c.min(0) < high) for c in taken)


def _paste(canvas: np.ndarray, crop: np.ndarray, tform) -> None:
    """Warp ``crop`` into ``canvas`` in place, only where the crop lands."""
    shape = canvas.shape[:2]
    warped = transform.warp(crop, tform.inverse, output_shape=shape, order=1,
                            preserve_range=True)
    inside = transform.warp(np.ones(crop.shape[:2]), tform.inverse, output_shape=shape,
                            order=1) > 0.5
    canvas[inside] = np.clip(np.rint(warped[inside]), 0, 255).astype(np.uint8)


def compose(rng: np.random.Generator, crops: Sequence[np.ndarray], items: Sequence[int],
            *, height: int = 480, width: int = 640, scales: Tuple[float, float] = (0.5, 2.0),
            max_angle: float = 20.0, tries: int = 50) -> Composite:
    """A canvas with the crops ``items`` (indices into ``crops``) placed at random; a face
    that finds no free place after ``tries`` is left out (not in ``faces``)."""
    canvas = background(rng, height, width)
    placed: List[Placed] = []
    for item in items:
        crop = crops[item]
        size = crop.shape[0]
        scale, angle = float(rng.uniform(*scales)), float(rng.uniform(-max_angle, max_angle))
        square = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], float)
        for _ in range(tries):
            centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
            tform = _transform(scale, angle, centre, size)
            corners = tform(square)
            if (corners.min() >= 0 and np.all(corners.max(0) <= [width - 1, height - 1])
                    and not _overlaps(corners, [p.corners for p in placed], 4.0)):
                _paste(canvas, crop, tform)
                placed.append(Placed(item, scale, angle, tform(template(size)), corners,
                                     tform.params))
                break
    return Composite(canvas, placed)
