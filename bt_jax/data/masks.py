"""Face masks over nose and mouth: what one looks like, drawn at random, and its drawing.

A ``MaskSpec`` (kind, colours, pattern, fit) is drawn from a
``numpy.random.default_rng`` stream keyed by (seed, identity, source, variant);
``draw_mask`` paints it onto a face's ``Canvas`` in face coordinates, so it
follows the head. The synthetic data set (``bt_jax.data.synthetic``) draws masks
on its own faces; the mask augmentation (``bt_jax.data.augment``) uses
``mask_layer`` to draw them alone, in the frame of aligned face crops
(``aligned_face``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from bt_jax.data import faces
from bt_jax.data.drawing import Canvas, ellipse_sd, segment_sd
from bt_jax.data.faces import Identity, Layout, Photo, pick_colour

# Stream tags of the mask draws (identities and photos use 1 and 2, see faces.py).
_TAG_MASK, _TAG_MASK_ORDER = 3, 4

MASK_KINDS = ("surgical", "n95", "cloth")
MASK_COLOURS = {
    "surgical": [(150, 200, 230), (235, 238, 240), (160, 215, 190), (235, 180, 195),
                 (40, 42, 48), (120, 170, 220)],
    "n95": [(240, 240, 236), (225, 222, 210), (170, 172, 176), (40, 60, 110),
            (235, 225, 160)],
    "cloth": [(200, 40, 40), (40, 60, 160), (30, 30, 30), (230, 150, 40),
              (90, 150, 60), (120, 60, 140), (60, 160, 170), (240, 240, 240)],
}


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """One face mask over nose and mouth."""
    kind: str               # one of MASK_KINDS
    colour: tuple
    colour2: tuple          # pattern colour for cloth, valve for n95
    pattern: str            # cloth: stripes/dots/checks/plain; n95: valve/plain
    top: float              # offset of the top edge from the nose bridge
    width: float            # half-width relative to the face half-width
    freq: float             # pattern frequency


def sample_mask(seed: int, index: int, source: int, variant: int) -> MaskSpec:
    """Draw mask ``variant`` (1-based) of a photo.

    The kind follows a per-photo permutation so that up to three variants of
    one photo all differ in shape; later ones differ in colour and pattern.
    """
    order = np.random.default_rng([seed, index, _TAG_MASK_ORDER, source]).permutation(3)
    kind = MASK_KINDS[order[(variant - 1) % 3]]
    rng = np.random.default_rng([seed, index, _TAG_MASK, source, variant])
    patterns = {"cloth": ("stripes", "dots", "checks", "plain"),
                "n95": ("valve", "plain"), "surgical": ("plain",)}[kind]
    return MaskSpec(
        kind=kind,
        colour=pick_colour(rng, np.array(MASK_COLOURS[kind], np.float32) / 255, 0.03),
        colour2=tuple(rng.uniform(0, 1, 3).round(4).tolist()),
        pattern=patterns[rng.integers(len(patterns))],
        top=rng.uniform(0.07, 0.13), width=rng.uniform(0.9, 1.05), freq=rng.uniform(14, 26))


def mask_shape(kind: str, x, y, top: float, bot: float, hw: float):
    """Signed distance of a mask outline; x is relative to the nose line."""
    if kind == "surgical":
        # A pleated rectangle bent round the face.
        side = np.abs(x) - hw * (1 - 0.08 * np.clip((y - top) / (bot - top), 0, 1))
        return np.maximum(side, np.maximum(top + 0.1 * x**2 - y, y - (bot - 0.25 * x**2)))
    if kind == "n95":
        # A moulded cup: it stops just under the chin instead of the neck.
        bot = bot - 0.06
        mid = 0.5 * (top + bot)
        return ellipse_sd(x, y - mid, hw * 0.9, 0.5 * (bot - top) + 0.02)
    # Cloth: pointed over the nose, rounded under the chin.
    upper = top - 0.04 + 0.2 * np.abs(x) - y
    lower = y - (bot + 0.04 - 0.35 * x**2)
    return np.maximum(np.abs(x) - hw, np.maximum(upper, lower))


def _mask_pattern(c: Canvas, mask: MaskSpec, x, y, inside):
    """Details printed on the mask: pleats, seam, valve or fabric pattern."""
    dark = np.asarray(mask.colour, np.float32) * 0.78
    if mask.kind == "surgical":
        for k in (0.3, 0.5, 0.7):
            line = np.abs(y - (inside[0] + k * (inside[1] - inside[0]) + 0.06 * x**2)) - 0.008
            c.paint(np.maximum(line, inside[2]), dark)
    elif mask.kind == "n95":
        c.paint(np.maximum(np.abs(x) - 0.008, inside[2]), dark)
        if mask.pattern == "valve":
            centre = (0.32 * inside[3], 0.5 * (inside[0] + inside[1]) + 0.08)
            c.paint(np.hypot(x - centre[0], y - centre[1]) - 0.085, mask.colour2)
    elif mask.pattern != "plain":
        f = mask.freq
        if mask.pattern == "stripes":
            field = np.sin(f * (x + 0.6 * y))
        elif mask.pattern == "checks":
            field = np.sin(f * x) * np.sin(f * y)
        else:
            field = 0.55 - np.hypot(np.sin(f * x), np.sin(f * y))
        # The field is smooth, so its sign gives a soft stripe/dot edge.
        c.paint(np.maximum(-field * 0.4 / f, inside[2]), mask.colour2)


def draw_mask(c: Canvas, ident: Identity, lay: Layout, mask: MaskSpec):
    """Paint ``mask`` with its ear loops over the face of ``ident`` laid out as ``lay``."""
    top = ident.eye_y + mask.top
    bot = lay.chin_y + 0.04
    hw = lay.rx * mask.width
    x, y = c.u - lay.nose_x, c.v
    colour = np.asarray(mask.colour, np.float32)
    for side in (-1, 1):
        # Ear loops run from the mask's edge to the ear.
        for yy in (top + 0.06, bot - 0.2):
            loop = segment_sd(c.u, c.v, (lay.nose_x + side * hw * 0.9, yy),
                              (side * (lay.rx + 0.02), lay.ear_y), 0.011)
            c.paint(loop, colour * 0.92)
    sd = mask_shape(mask.kind, x, y, top, bot, hw)
    # Shade towards the sides so the mask looks wrapped round the face.
    shade = (1 - 0.25 * np.clip(np.abs(x) / hw, 0, 1) ** 2)[..., None]
    c.paint(sd, colour * shade)
    _mask_pattern(c, mask, x, y, (top, bot, sd, hw))


# ------------------------------------------------------------ aligned crops


@functools.lru_cache(maxsize=1)
def aligned_face() -> tuple[Identity, Photo, Layout]:
    """Identity, photo and layout that put the synthetic face where aligned crops put faces.

    Scale 1.6 and a downward shift put the eyes at row ~52/112, 35 px apart, and
    the face about 90 px wide, as in MLFW and ArcFace crops; only the fields the
    mask drawing reads matter.
    """
    ident = dataclasses.replace(faces.sample_identity(0, 0), eye_y=-0.15, eye_dx=0.2,
                                face_rx=0.5, face_ry_chin=0.62, nose_len=0.3)
    photo = dataclasses.replace(faces.sample_photo(0, 0, 1), shift=(0.0, 0.16), angle=0.0,
                                scale=1.6, yaw=0.0)
    return ident, photo, faces.layout(ident, photo)


def mask_layer(mask: MaskSpec, size: int) -> np.ndarray:
    """float32 (size, size, 4): ``mask`` alone on the aligned face, premultiplied RGB + alpha.

    The mask is drawn over black and over white: painting is a linear blend, so
    the two results give its colour (over black) and its transmittance (white
    minus black), whatever shapes and patterns it has.
    """
    ident, photo, lay = aligned_face()
    over = []
    for background in (0.0, 1.0):
        canvas = Canvas(size, photo)
        canvas.img[:] = background
        draw_mask(canvas, ident, lay, mask)
        over.append(canvas.img)
    alpha = 1.0 - (over[1] - over[0]).mean(-1, keepdims=True)
    return np.concatenate([over[0], alpha], -1)
