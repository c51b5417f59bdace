"""Faces in a photo: MTCNN's three stages on an image pyramid, with boxes and five landmarks.

1. P-Net slides a 12x12 window over the photo at a pyramid of scales (the smallest face
   ``min_face_size`` pixels maps to 12): cells above ``thresholds[0]`` become boxes,
   pruned by non-maximum suppression within each scale and then across scales.
2. R-Net rescores and refines each box from a 24x24 patch (``thresholds[1]``).
3. O-Net does the same from a 48x48 patch and places the landmarks (``thresholds[2]``);
   the last suppression compares overlap with the smaller box, so a box inside a larger
   face goes.

Shapes are padded to a few sizes (images to one of ``BUCKETS``, patch batches to
powers of two) so that a folder of photos compiles each network a handful of times.
Photos larger than ``max_side`` are downscaled for detection; boxes and landmarks are
given in the photo's own pixels. Landmarks are (x, y) in the order left eye, right eye,
nose tip, left mouth corner, right mouth corner, left and right as seen in the image.
With ``mirror_landmarks`` O-Net also places them on each face's mirrored patch, and the
two estimates, mapped back, are averaged: O-Net's own points are not mirror-symmetric,
the average is (measured in docs/detection.md: a little closer to the truth, no help to
the recogniser, so off by default).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import jax
import numpy as np
from PIL import Image

from bt_jax.identify.align import check_align_from
from bt_jax.models.mtcnn import ONet, PNet, RNet
from bt_jax.weights import mtcnn as mtcnn_weights

# Scaled images are padded up to the next of these sides before P-Net (see PNet's
# ``valid``): 32 and 48 times powers of two, so that photos of any size share a few
# compiled shapes at the cost of at most half a side of padding.
BUCKETS = tuple(sorted(b << k for b in (32, 48) for k in range(8)))
# P-Net's window and stride, in pixels of a scaled image.
CELL, STRIDE = 12, 2
# The landmark order seen in a mirror: left and right eyes and mouth corners swap.
MIRRORED = [1, 0, 2, 4, 3]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What config.detect sets; the defaults are MTCNN's usual ones."""
    min_face_size: int = 20
    scale_factor: float = 0.709
    thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.8)
    nms: Tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)
    max_side: int = 1280
    # Also place the landmarks on the mirrored O-Net patch and average the two (module doc).
    mirror_landmarks: bool = False
    # The landmarks crops are aligned from (align.ALIGN_FROM); detection does not use it.
    align_from: str = "five"

    @classmethod
    def from_config(cls, detect) -> "Settings":
        settings = cls(int(detect.min_face_size), float(detect.scale_factor),
                       tuple(float(t) for t in detect.thresholds),
                       tuple(float(t) for t in detect.nms), int(detect.max_side),
                       bool(detect.mirror_landmarks), str(detect.align_from))
        settings.check()
        return settings

    def check(self) -> None:
        if self.min_face_size < CELL:
            raise ValueError(f"config.detect.min_face_size={self.min_face_size}: give at "
                             f"least {CELL} pixels (P-Net's window).")
        if not 0.1 <= self.scale_factor <= 0.95:
            raise ValueError(f"config.detect.scale_factor={self.scale_factor}: give a value "
                             "in [0.1, 0.95] (0.709 halves the area every step).")
        if len(self.thresholds) != 3 or not all(0 <= t < 1 for t in self.thresholds):
            raise ValueError(f"config.detect.thresholds={self.thresholds}: give three face "
                             "probabilities in [0, 1), one per stage.")
        if len(self.nms) != 4 or not all(0 < t <= 1 for t in self.nms):
            raise ValueError(f"config.detect.nms={self.nms}: give four overlaps in (0, 1].")
        check_align_from(self.align_from)
        if self.max_side < 2 * CELL:
            raise ValueError(f"config.detect.max_side={self.max_side}: give at least "
                             f"{2 * CELL} pixels.")


class Faces(NamedTuple):
    """The faces of one photo, highest score first."""
    boxes: np.ndarray      # (n, 4) x1, y1, x2, y2
    scores: np.ndarray     # (n,)
    landmarks: np.ndarray  # (n, 5, 2) x, y

    def __len__(self) -> int:
        return len(self.scores)

    def largest(self) -> int:
        """Index of the face with the largest box."""
        return largest_box(self.boxes)


def largest_box(boxes: np.ndarray) -> int:
    """Index of the largest (x1, y1, x2, y2) box by area."""
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


# ----------------------------------------------------------------------------------------
# the networks, compiled once per padded shape


@jax.jit
def _pnet(params, images, valid):
    return PNet().apply({"params": params}, images, valid)


@jax.jit
def _rnet(params, patches):
    return RNet().apply({"params": params}, patches)


@jax.jit
def _onet(params, patches):
    return ONet().apply({"params": params}, patches)


def normalise(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> MTCNN's input scale."""
    return (image.astype(np.float32) - 127.5) / 128.0


# ----------------------------------------------------------------------------------------
# boxes


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first. ``by="min"``
    divides the overlap by the smaller box (MTCNN's last stage), which the libraries'
    suppressions (OpenCV, torchvision) do not offer."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        low = np.maximum(boxes[i, :2], boxes[rest, :2])
        high = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(high - low, 0, None), axis=1)
        base = (np.minimum(areas[i], areas[rest]) if by == "min"
                else areas[i] + areas[rest] - inter)
        order = rest[inter / np.maximum(base, 1e-12) <= threshold]
    return np.asarray(keep, np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (the next stage's patches are square)."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the networks' offsets, which are fractions of the box's size."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, axis=1)
    return boxes + offsets * size


def crop_patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) bilinear samples of ``image`` (float, h x w x 3) over each box,
    corners included; outside the image reads 0 (MTCNN's grey)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    xs = boxes[:, 0, None] + (boxes[:, 2] - boxes[:, 0])[:, None] * t
    ys = boxes[:, 1, None] + (boxes[:, 3] - boxes[:, 1])[:, None] * t
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = (xs - x0)[:, None, :, None], (ys - y0)[:, :, None, None]
    out = 0.0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            out = out + wy * wx * _read(image, y0 + dy, x0 + dx)
    return out.astype(np.float32)


def _read(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """image[rows[:, i], cols[:, j]] for every i, j, zero outside."""
    h, w = image.shape[:2]
    r, c = rows.astype(np.int64)[:, :, None], cols.astype(np.int64)[:, None, :]
    inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w))[..., None]
    return np.where(inside, image[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)], 0.0)


# ----------------------------------------------------------------------------------------
# the stages


def pyramid(height: int, width: int, settings: Settings) -> List[float]:
    """Scales at which a face of min_face_size .. the whole image fills P-Net's window."""
    scale = CELL / settings.min_face_size
    scales = []
    while min(height, width) * scale >= CELL:
        scales.append(scale)
        scale *= settings.scale_factor
    return scales


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 image resized by ``scale`` with area averaging (box filter), as MTCNN does."""
    h, w = image.shape[:2]
    size = (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def _bucket(n: int) -> int:
    return next((b for b in BUCKETS if b >= n), -(-n // BUCKETS[-1]) * BUCKETS[-1])


def _padded(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.pad(image, ((0, _bucket(h) - h), (0, _bucket(w) - w), (0, 0)))


def _pnet_boxes(params, image: np.ndarray, scale: float, settings: Settings) -> np.ndarray:
    """(n, 5) boxes and scores, in the photo's pixels, found at one scale."""
    scaled = normalise(_resized(image, scale))
    h, w = scaled.shape[:2]
    offsets, probs = _pnet(params, _padded(scaled)[None], np.asarray([[h, w]], np.int32))
    # Cells whose 12x12 window lies inside the real (unpadded) image.
    rows, cols = (h - CELL) // STRIDE + 1, (w - CELL) // STRIDE + 1
    probs = np.asarray(probs[0, :rows, :cols])
    offsets = np.asarray(offsets[0, :rows, :cols])
    y, x = np.nonzero(probs > settings.thresholds[0])
    if not len(y):
        return np.zeros((0, 5), np.float32)
    cells = np.stack([x * STRIDE, y * STRIDE, x * STRIDE + CELL, y * STRIDE + CELL], axis=1)
    boxes = (cells + offsets[y, x] * CELL) / scale
    found = np.concatenate([boxes, probs[y, x, None]], axis=1)
    return found[nms(found[:, :4], found[:, 4], settings.nms[0])]


def _batched(net, params, patches: np.ndarray):
    """``net`` on ``patches`` padded to a power-of-two batch (one compile per size)."""
    n = len(patches)
    size = max(16, 1 << (n - 1).bit_length())
    padded = np.concatenate([patches, np.zeros((size - n,) + patches.shape[1:], np.float32)])
    return [np.asarray(out)[:n] for out in net(params, padded)]


class Detector:
    """Photo (uint8 h x w x 3) -> Faces. The weights come from weights/mtcnn.py unless
    ``params`` ({stage: Flax params}) are given."""

    def __init__(self, settings: Settings = Settings(), params: Optional[Dict] = None,
                 cache: Optional[str] = None):
        settings.check()
        self.settings = settings
        self.params = params or mtcnn_weights.load(mtcnn_weights.fetch(cache))

    def __call__(self, photo: np.ndarray) -> Faces:
        photo = _rgb(photo)
        factor = min(1.0, self.settings.max_side / max(photo.shape[:2]))
        image = _resized(photo, factor) if factor < 1 else photo
        faces = self._detect(image)
        return Faces(faces.boxes / factor, faces.scores, faces.landmarks / factor)

    def _detect(self, image: np.ndarray) -> Faces:
        s = self.settings
        found = [_pnet_boxes(self.params["pnet"], image, scale, s)
                 for scale in pyramid(*image.shape[:2], s)]
        boxes = np.concatenate(found) if found else np.zeros((0, 5), np.float32)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], s.nms[1])]
        normalised = normalise(image)
        boxes = self._rnet(normalised, square(boxes[:, :4]))
        return self._onet(normalised, square(boxes))

    def _rnet(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return boxes
        offsets, probs = _batched(_rnet, self.params["rnet"], crop_patches(image, boxes, 24))
        keep = probs > self.settings.thresholds[1]
        boxes, probs = refine(boxes[keep], offsets[keep]), probs[keep]
        return boxes[nms(boxes, probs, self.settings.nms[2])]

    def _onet(self, image: np.ndarray, boxes: np.ndarray) -> Faces:
        if not len(boxes):
            return Faces(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))
        patches = crop_patches(image, boxes, 48)
        offsets, marks, probs = _batched(_onet, self.params["onet"], patches)
        keep = probs > self.settings.thresholds[2]
        points = _points(marks[keep], boxes[keep])
        if self.settings.mirror_landmarks and keep.any():
            points = (points + self._mirrored_points(patches[keep], boxes[keep])) / 2
        boxes, probs = refine(boxes[keep], offsets[keep]), probs[keep]
        kept = nms(boxes, probs, self.settings.nms[3], by="min")
        return Faces(boxes[kept], probs[kept], points[kept])

    def _mirrored_points(self, patches: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """O-Net's points on the mirrored patches, in the photo's pixels and in the
        face's order: a point at x in a mirrored patch is at x1 + x2 - x in the photo,
        and the mirror image's left eye and mouth corner are the face's right ones."""
        points = _points(_batched(_onet, self.params["onet"], patches[:, :, ::-1])[1], boxes)
        points[..., 0] = boxes[:, None, 0] + boxes[:, None, 2] - points[..., 0]
        return points[:, MIRRORED]


def _points(marks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """O-Net's (n, 10) outputs -> (n, 5, 2) points in the photo's pixels. O-Net gives each
    point as a fraction of the box's size (corners included) from its top-left corner.
    The original code subtracts 1 more, from its 1-based pixels; in 0-based pixels that
    moved every point a pixel up and left (0.01 of the inter-ocular distance worse
    against the template, measured on train)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
    return np.stack([marks[:, :5], marks[:, 5:]], axis=2) * size[:, None] + boxes[:, None, :2]


def _rgb(photo: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 -> (h, w, 3) uint8."""
    photo = np.asarray(photo)
    if photo.dtype != np.uint8:
        raise ValueError(f"a photo must be uint8 pixels, not {photo.dtype}.")
    if photo.ndim == 2:
        photo = photo[..., None]
    if photo.ndim != 3 or photo.shape[2] not in (1, 3, 4):
        raise ValueError(f"a photo must be (height, width[, 1|3|4]), not {photo.shape}.")
    return np.repeat(photo, 3, axis=2) if photo.shape[2] == 1 else photo[..., :3]
