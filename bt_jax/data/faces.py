"""Synthetic faces: what a person and a photo look like, drawn at random, and their rendering.

An ``Identity`` is the stable look of one person, a ``Photo`` one shot of them
(pose, expression, lighting, clothes, background). Both are drawn from
``numpy.random.default_rng`` streams keyed by (seed, identity[, source]), so
identity ``i`` looks the same whatever else is drawn, and the same seed gives
the same faces. Rendering paints the face layer by layer onto a
``bt_jax.data.drawing.Canvas``; masks (``bt_jax.data.masks``) and glasses go on
top, and ``finish`` adds the camera effects and quantises.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bt_jax.data.drawing import Canvas, cover, curve_sd, ellipse_sd, segment_sd

# Stream tags keep the identity and photo draws independent of each other (masks: 3, 4).
_TAG_IDENTITY, _TAG_PHOTO = 1, 2

_SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96),
    (160, 102, 66), (112, 72, 46), (78, 52, 36)], np.float32) / 255
_HAIR_COLOURS = np.array([
    (22, 18, 16), (55, 38, 26), (98, 66, 42), (135, 66, 34), (196, 164, 104),
    (150, 148, 146), (222, 220, 214), (70, 60, 55)], np.float32) / 255
_EYE_COLOURS = np.array([
    (70, 42, 24), (40, 26, 18), (62, 110, 170), (70, 120, 80), (110, 115, 120),
    (120, 90, 50)], np.float32) / 255
_HAIR_STYLES = ("short", "long", "fringe", "side_part", "bald", "buzz")


@dataclasses.dataclass(frozen=True)
class Identity:
    """Stable look of one person (face coordinates, RGB in [0, 1])."""
    face_rx: float
    face_ry_top: float
    face_ry_chin: float
    jaw_taper: float
    skin: tuple
    hair: tuple
    hair_style: str
    hairline: float
    hair_volume: float
    eye_y: float
    eye_dx: float
    eye_rx: float
    eye_aspect: float
    eye_colour: tuple
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    brow_slope: float
    nose_len: float
    nose_width: float
    mouth_width: float
    lip_colour: tuple
    ear_rx: float
    ear_ry: float
    beard: bool
    glasses: int            # 0 none, 1 round, 2 rectangular
    glasses_colour: tuple
    moles: tuple            # ((u, v, radius), ...)
    part_side: int          # -1 or 1: where a side parting sits


@dataclasses.dataclass(frozen=True)
class Photo:
    """One source photo: pose, expression, lighting, clothes and background."""
    shift: tuple
    angle: float            # in-plane rotation, radians
    scale: float
    yaw: float              # shifts inner features sideways, squashes the face
    smile: float
    mouth_open: float
    brow_raise: float
    eye_open: float
    brightness: float
    light_dir: tuple
    light_strength: float
    contrast: float
    tint: tuple
    background: tuple       # (kind, colour_a, colour_b, direction)
    shirt: tuple
    grayscale: bool
    noise: float
    noise_seed: int


def pick_colour(rng, palette, jitter):
    """A random colour of ``palette`` (RGB rows in [0, 1]), jittered, rounded for stable reprs."""
    base = palette[rng.integers(len(palette))]
    return tuple(np.clip(base + rng.normal(0, jitter, 3), 0, 1).round(4).tolist())


def _skin(rng):
    # Interpolate between reference tones so skin colour is continuous.
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(t)
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    tone = _SKIN_TONES[lo] * (1 - (t - lo)) + _SKIN_TONES[hi] * (t - lo)
    return tuple(np.clip(tone + rng.normal(0, 0.025, 3), 0, 1).round(4).tolist())


def sample_identity(seed: int, index: int) -> Identity:
    """Draw identity ``index``; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index, _TAG_IDENTITY])
    u = rng.uniform
    skin = _skin(rng)
    moles = tuple((round(u(-0.4, 0.4), 3), round(u(-0.55, -0.05), 3), round(u(0.015, 0.03), 3))
                  for _ in range(rng.choice(4, p=[0.55, 0.3, 0.1, 0.05])))
    return Identity(
        face_rx=u(0.46, 0.62), face_ry_top=u(0.66, 0.8), face_ry_chin=u(0.68, 0.86),
        jaw_taper=u(0.0, 0.4), skin=skin, hair=pick_colour(rng, _HAIR_COLOURS, 0.04),
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
        hairline=u(-0.62, -0.38), hair_volume=u(0.04, 0.2),
        eye_y=u(-0.22, -0.08), eye_dx=u(0.18, 0.29), eye_rx=u(0.075, 0.12),
        eye_aspect=u(0.38, 0.62), eye_colour=pick_colour(rng, _EYE_COLOURS, 0.04),
        brow_gap=u(0.09, 0.17), brow_len=u(0.09, 0.15), brow_thick=u(0.025, 0.075),
        brow_arch=u(-0.01, 0.05), brow_slope=u(-0.25, 0.25),
        nose_len=u(0.2, 0.32), nose_width=u(0.07, 0.14), mouth_width=u(0.12, 0.2),
        lip_colour=tuple((np.array(skin) * [0.8, 0.55, 0.55] + 0.05).round(4).tolist()),
        ear_rx=u(0.07, 0.12), ear_ry=u(0.13, 0.2), beard=bool(u() < 0.2),
        glasses=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        glasses_colour=pick_colour(rng, np.array([(20, 20, 20), (120, 90, 60), (180, 180, 185),
                                                  (140, 30, 30)], np.float32) / 255, 0.03),
        moles=moles, part_side=int(rng.choice([-1, 1])))


def _background(rng):
    kind = ("flat", "gradient", "split")[rng.integers(3)]
    # Muted colours: a saturated backdrop would swamp the face in pixel space.
    a, b = rng.uniform(0.35, 0.65, 3), rng.uniform(0.35, 0.65, 3)
    angle = rng.uniform(0, 2 * math.pi)
    return (kind, tuple(a.round(4).tolist()), tuple(b.round(4).tolist()),
            (round(math.cos(angle), 4), round(math.sin(angle), 4)))


def sample_photo(seed: int, index: int, source: int) -> Photo:
    """Draw source photo ``source`` (1-based) of identity ``index``."""
    rng = np.random.default_rng([seed, index, _TAG_PHOTO, source])
    u = rng.uniform
    angle = u(0, 2 * math.pi)
    # Like aligned face crops: the eyes barely move, so shift, rotation and
    # scale stay small; yaw, expression, light and background carry the change.
    return Photo(
        shift=(u(-0.03, 0.03), u(-0.03, 0.03)), angle=math.radians(u(-4, 4)),
        scale=u(1.22, 1.38), yaw=u(-0.25, 0.25), smile=u(-0.03, 0.08),
        mouth_open=max(0.0, u(-0.03, 0.05)), brow_raise=u(-0.015, 0.04),
        eye_open=u(0.6, 1.1), brightness=u(0.85, 1.1),
        light_dir=(math.cos(angle), math.sin(angle)), light_strength=u(0.0, 0.15),
        contrast=u(0.85, 1.1), tint=tuple(u(0.92, 1.08, 3).round(4).tolist()),
        background=_background(rng), shirt=tuple(u(0, 1, 3).round(4).tolist()),
        grayscale=bool(u() < 0.15), noise=u(0.005, 0.03),
        noise_seed=int(rng.integers(2**31)))


# ------------------------------------------------------------------- layout

FACE_CY = 0.08          # the face centre sits a little below the image centre


@dataclasses.dataclass(frozen=True)
class Layout:
    """Positions derived from identity + photo (face coordinates)."""
    rx: float            # face half-width after the yaw squash
    eye_x: float         # sideways offset of the eyes and brows from yaw
    nose_x: float        # larger offset: the nose sticks out further
    mouth_y: float
    chin_y: float
    ear_y: float
    hairline: float


def layout(ident: Identity, photo: Photo) -> Layout:
    """Where the parts of ``ident``'s face sit in ``photo``."""
    mouth_y = ident.eye_y + ident.nose_len + 0.15
    brow_y = ident.eye_y - ident.brow_gap
    return Layout(
        rx=ident.face_rx * (1 - 0.12 * abs(photo.yaw)),
        eye_x=photo.yaw * 0.2, nose_x=photo.yaw * 0.3, mouth_y=mouth_y,
        chin_y=FACE_CY + ident.face_ry_chin, ear_y=ident.eye_y + 0.08,
        # Keep a strip of forehead between brows and hair, whatever was drawn.
        hairline=min(ident.hairline, brow_y - 0.14))


def face_sd(c: Canvas, ident: Identity, lay: Layout, grow: float = 0.0):
    """Signed distance to the face outline, widened by ``grow``."""
    y = c.v - FACE_CY
    ry = np.where(y < 0, ident.face_ry_top, ident.face_ry_chin) + grow
    # Narrow the lower half towards the chin: the jaw line is part of identity.
    taper = 1 - ident.jaw_taper * np.clip(y / ident.face_ry_chin, 0, 1) ** 2
    return ellipse_sd(c.u, y, (lay.rx + grow) * taper, ry)


# ------------------------------------------------------------ face layers


def _draw_background(c: Canvas, photo: Photo):
    kind, a, b, (dx, dy) = photo.background
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = c.img_x * dx + c.img_y * dy            # image frame: the scene does not rotate
    if kind == "flat":
        c.img[:] = a
    elif kind == "gradient":
        c.img[:] = a + (b - a) * np.clip(0.5 + 0.5 * t, 0, 1)[..., None]
    else:
        c.img[:] = a + (b - a) * cover(t - 0.2, 2 * c.px)[..., None]


def _draw_body(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    skin = np.asarray(ident.skin, np.float32)
    c.paint(ellipse_sd(c.u, c.v - (lay.chin_y + 0.75), 1.05, 0.6), photo.shirt)
    neck = np.maximum(np.abs(c.u - lay.nose_x * 0.3) - lay.rx * 0.55,
                      np.abs(c.v - (lay.chin_y + 0.1)) - 0.45)
    c.paint(neck, skin * 0.78)


def _draw_back_hair(c: Canvas, ident: Identity, lay: Layout):
    style, vol = ident.hair_style, ident.hair_volume
    cap = ellipse_sd(c.u, c.v - FACE_CY, lay.rx + vol, ident.face_ry_top + vol)
    if style == "long":
        # Hair falls past the jaw on both sides of the face.
        drape = np.maximum(np.abs(c.u) - (lay.rx + vol * 0.8), c.v - (lay.chin_y - 0.05))
        drape = np.maximum(drape, -np.abs(c.u) + lay.rx * 0.5)
        drape = np.maximum(drape, FACE_CY - 0.3 - c.v)
        c.paint(np.minimum(np.maximum(cap, c.v - ident.eye_y), drape), ident.hair)
    elif style == "bald":
        # Only a ring of hair above the ears remains.
        band = np.abs(c.v - (ident.eye_y - 0.08)) - 0.14
        c.paint(np.maximum(cap, band), ident.hair)
    elif style != "buzz":
        c.paint(np.maximum(cap, c.v - (ident.eye_y + 0.02)), ident.hair)


def _draw_ears(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    skin = np.asarray(ident.skin, np.float32)
    for side in (-1, 1):
        # The ear on the side the head turns away from shows more.
        rx = ident.ear_rx * (1 + 0.8 * photo.yaw * side)
        x, y = c.u - side * (lay.rx + rx * 0.25), c.v - lay.ear_y
        c.paint(ellipse_sd(x, y, rx, ident.ear_ry), skin * 0.72)
        c.paint(ellipse_sd(x, y, rx - 0.015, ident.ear_ry - 0.015), skin * 0.88)
        c.paint(ellipse_sd(x - side * rx * 0.2, y, rx * 0.4, ident.ear_ry * 0.55),
                skin * 0.62, soft=2)


def _draw_face(c: Canvas, ident: Identity, lay: Layout):
    sd = face_sd(c, ident, lay)
    # Darker towards the rim so the face reads as a rounded surface.
    rim = np.clip(-sd / (lay.rx * 0.45), 0, 1)
    shade = (0.8 + 0.2 * np.sqrt(rim))[..., None]
    c.paint(sd, np.asarray(ident.skin, np.float32) * shade)
    for (mu, mv, mr) in ident.moles:
        c.paint(np.hypot(c.u - mu - lay.eye_x, c.v - mv) - mr, np.asarray(ident.skin) * 0.45)


def _draw_front_hair(c: Canvas, ident: Identity, lay: Layout):
    style, vol = ident.hair_style, ident.hair_volume
    if style == "bald":
        return
    cap = ellipse_sd(c.u, c.v - FACE_CY, lay.rx + vol, ident.face_ry_top + vol)
    line = lay.hairline + 0.45 * c.u ** 2          # temples sit lower than the centre
    if style == "fringe":
        line = line + 0.12 + 0.02 * np.sin(c.u * 45)
    elif style == "side_part":
        line = line + 0.12 * np.clip(c.u * ident.part_side, -0.5, 1)
    sd = np.maximum(cap, c.v - np.minimum(line, ident.eye_y - 0.02))
    if style == "buzz":
        # Stubble only tints the scalp; it must not float over the background.
        sd = np.maximum(sd, face_sd(c, ident, lay, grow=0.01))
    c.paint(sd, ident.hair, opacity=0.6 if style == "buzz" else 1.0)


def _draw_eyes(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    skin = np.asarray(ident.skin, np.float32)
    rx, ry = ident.eye_rx, ident.eye_rx * ident.eye_aspect * photo.eye_open
    for side in (-1, 1):
        x, y = c.u - (side * ident.eye_dx + lay.eye_x), c.v - ident.eye_y
        c.paint(ellipse_sd(x, y + 0.01, rx * 1.35, rx * 0.85), skin * 0.82, soft=4)
        white = ellipse_sd(x, y, rx, ry)
        c.paint(white, (0.92, 0.91, 0.88))
        # Iris and pupil are clipped to the eye opening; gaze follows the yaw.
        ix = x - photo.yaw * 0.04
        c.paint(np.maximum(np.hypot(ix, y) - rx * 0.5, white), ident.eye_colour)
        c.paint(np.maximum(np.hypot(ix, y) - rx * 0.22, white), (0.05, 0.04, 0.04))
        lid = curve_sd(x, y, -rx, rx,
                       lambda t: -ry * np.sqrt(np.clip(1 - (t / rx) ** 2, 0, 1)), 0.012)
        c.paint(lid, skin * 0.3)


def _draw_brows(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    colour = np.asarray(ident.hair, np.float32) * 0.8 + 0.02
    length, arch, slope = ident.brow_len, ident.brow_arch, ident.brow_slope
    by = ident.eye_y - ident.brow_gap - photo.brow_raise
    for side in (-1, 1):
        x = (c.u - (side * ident.eye_dx + lay.eye_x)) * side   # x grows outwards
        sd = curve_sd(x, c.v, -length, length,
                      lambda t: by - arch * (1 - (t / length) ** 2) + slope * t * 0.5,
                      lambda t: ident.brow_thick * (0.6 - 0.2 * t / length))
        c.paint(sd, colour)


def _draw_nose_mouth(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    skin = np.asarray(ident.skin, np.float32)
    tip = ident.eye_y + ident.nose_len
    x = c.u - lay.nose_x
    c.paint(segment_sd(x, c.v, (0.02, ident.eye_y + 0.06), (0.03, tip - 0.05), 0.012),
            skin * 0.85, soft=3)
    c.paint(ellipse_sd(x, c.v - tip + 0.02, ident.nose_width * 0.6, 0.05), skin * 0.9, soft=3)
    for side in (-1, 1):
        c.paint(ellipse_sd(x - side * ident.nose_width * 0.4, c.v - tip, 0.025, 0.014), skin * 0.4)
    mw, my, smile = ident.mouth_width, lay.mouth_y, photo.smile
    if photo.mouth_open > 0.005:
        c.paint(ellipse_sd(x, c.v - my - photo.mouth_open * 0.5, mw * 0.8,
                           photo.mouth_open + 0.01), (0.25, 0.08, 0.08))
    for dy, thick in ((-0.012, 0.014), (photo.mouth_open + 0.014, 0.018)):
        c.paint(curve_sd(x, c.v, -mw, mw, lambda t: my + dy - smile * (t / mw) ** 2,
                         lambda t: thick * (1 - 0.6 * (t / mw) ** 2)), ident.lip_colour)


def _draw_beard(c: Canvas, ident: Identity, photo: Photo, lay: Layout):
    if not ident.beard:
        return
    face = face_sd(c, ident, lay, grow=0.01)
    # Jaw and moustache from just under the nose, sideburns up to the ears.
    jaw = np.maximum(face, ident.eye_y + ident.nose_len + 0.04 - c.v)
    burns = np.maximum(face, np.maximum(lay.rx * 0.78 - np.abs(c.u), ident.eye_y + 0.04 - c.v))
    mouth = ellipse_sd(c.u - lay.nose_x, c.v - lay.mouth_y - 0.005, ident.mouth_width * 0.85,
                       0.022 + photo.mouth_open)
    c.paint(np.maximum(np.minimum(jaw, burns), -mouth), ident.hair, opacity=0.9)


def draw_glasses(c: Canvas, ident: Identity, lay: Layout):
    """The identity's glasses, if any: drawn last, over a mask."""
    if not ident.glasses:
        return
    # Lenses may not overlap across the nose, whatever the eye size.
    r, thick = min(ident.eye_rx * 1.55, ident.eye_dx - 0.03), 0.014
    for side in (-1, 1):
        x, y = c.u - (side * ident.eye_dx + lay.eye_x), c.v - ident.eye_y
        if ident.glasses == 1:
            rim = ellipse_sd(x, y, r, r * 0.85)
        else:
            rim = np.maximum(np.abs(x) - r, np.abs(y) - r * 0.65)
        c.paint(np.abs(rim) - thick, ident.glasses_colour)
        arm = segment_sd(c.u, c.v, (side * ident.eye_dx + lay.eye_x + side * r, ident.eye_y),
                         (side * lay.rx, lay.ear_y - 0.04), thick * 0.8)
        c.paint(arm, ident.glasses_colour)
    inner = ident.eye_dx - r
    c.paint(segment_sd(c.u - lay.eye_x, c.v, (-inner, ident.eye_y - 0.02),
                       (inner, ident.eye_y - 0.02), thick), ident.glasses_colour)


# ---------------------------------------------------------------- rendering


def render_base(ident: Identity, photo: Photo, size: int):
    """Everything that lies under the mask, as a canvas to copy per variant."""
    c = Canvas(size, photo)
    lay = layout(ident, photo)
    _draw_background(c, photo)
    _draw_body(c, ident, photo, lay)
    _draw_back_hair(c, ident, lay)
    _draw_ears(c, ident, photo, lay)
    _draw_face(c, ident, lay)
    _draw_front_hair(c, ident, lay)
    _draw_brows(c, ident, photo, lay)
    _draw_eyes(c, ident, photo, lay)
    _draw_nose_mouth(c, ident, photo, lay)
    _draw_beard(c, ident, photo, lay)
    return c, lay


def finish(c: Canvas, photo: Photo) -> np.ndarray:
    """Camera effects shared by all variants of a photo, then quantise."""
    img = c.img
    light = photo.brightness * (1 + photo.light_strength *
                                (c.img_x * photo.light_dir[0] + c.img_y * photo.light_dir[1]))
    img = img * light[..., None] * np.asarray(photo.tint, np.float32)
    mean = img.mean()
    img = (img - mean) * photo.contrast + mean
    if photo.grayscale:
        img = np.repeat(img @ np.array([0.299, 0.587, 0.114], np.float32), 3).reshape(img.shape)
    # Same noise for every variant: they are one photo with different masks.
    noise = np.random.default_rng(photo.noise_seed).normal(0, photo.noise, img.shape)
    return np.clip((img + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
