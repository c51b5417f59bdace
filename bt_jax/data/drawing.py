"""Analytic 2-D drawing: signed-distance-like fields painted onto a float RGB canvas.

Each shape is a field that is negative inside, in *face coordinates* (the image
spans [-1, 1] at scale 1, y points down), and a pixel's coverage is
``clip(0.5 - sd / pixel, 0, 1)``, which anti-aliases edges without
supersampling. A pose is applied by mapping pixel centres into face
coordinates, so everything drawn in those coordinates follows the head.
"""

from __future__ import annotations

import copy
import math

import numpy as np


def cover(sd, px):
    """Fractional pixel coverage of the region sd < 0 (px = pixel size)."""
    return np.clip(0.5 - sd / px, 0.0, 1.0)


def ellipse_sd(x, y, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse at the origin."""
    q = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    grad = np.sqrt((x / rx**2) ** 2 + (y / ry**2) ** 2) / np.maximum(q, 1e-6)
    return (q - 1.0) / np.maximum(grad, 1e-6)


def segment_sd(x, y, p0, p1, half_thick):
    """Signed distance to a thick straight segment with round caps."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return np.hypot(x - p0[0] - t * dx, y - p0[1] - t * dy) - half_thick


def curve_sd(x, y, x0, x1, curve, half_thick):
    """Thick stroke along y = curve(x), x in [x0, x1]; half_thick: number or f(x).

    The distance is measured to the point above/below, so keep curves gentle.
    """
    xc = np.clip(x, x0, x1)
    thick = half_thick(xc) if callable(half_thick) else half_thick
    return np.hypot(x - xc, y - curve(xc)) - thick


class Canvas:
    """Float RGB image plus the face coordinates of every pixel centre.

    ``photo`` gives the pose: ``shift`` (x, y), in-plane ``angle`` (radians), ``scale``.
    """

    def __init__(self, size: int, photo):
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        self.img_x, self.img_y = np.meshgrid(centres, centres)
        gx, gy = self.img_x - photo.shift[0], self.img_y - photo.shift[1]
        c, s = math.cos(photo.angle), math.sin(photo.angle)
        # Inverse pose: rotate back and undo the scale.
        self.u = (c * gx + s * gy) / photo.scale
        self.v = (-s * gx + c * gy) / photo.scale
        self.px = 2.0 / size / photo.scale
        self.img = np.zeros((size, size, 3), np.float32)

    def copy(self) -> "Canvas":
        """Same coordinates, own pixels: one base photo, many masks."""
        new = copy.copy(self)
        new.img = self.img.copy()
        return new

    def paint(self, sd, colour, opacity=1.0, soft=1.0):
        """Blend ``colour`` over the region sd < 0; ``soft`` widens the edge."""
        alpha = cover(sd, self.px * soft) * opacity
        colour = np.asarray(colour, np.float32)
        self.img += (colour - self.img) * alpha[..., None]
