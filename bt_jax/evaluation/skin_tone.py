"""Skin tone per identity as the Individual Typology Angle (ITA), for the bias analysis.

Per image: a skin mask, then ITA = arctan((L* - 50) / b*) * 180 / pi over its pixels
(CIELAB, D65). Per identity: the median over its images, their IQR, and one of the six
usual ITA categories (Chardon et al. 1991; Del Bino & Bernerd 2013).

The skin mask is the AND of

* the **measured region**: rows above ``mask_top`` (half the height by default), minus
  ``side_margin`` of the width on each side (ears, hair, background). MLFW faces are
  aligned with the eyes at ~45% of the height and the synthetic masks start just below
  them (~52%) and run to the chin, in colours that include beige and pink, so no colour
  rule can be trusted to reject them. Leaving the lower face out of *every* image,
  masked or not, also measures the same region (forehead, temples, cheeks at eye level)
  on all variants of a photo, so a tone does not depend on whether a mask is on;
* an **Otsu foreground**: Otsu's threshold on the grey levels of the region splits it in
  two, and the half holding more rule-passing pixels in the *core* (between and above
  the eyes) is kept. This drops skin-coloured backgrounds (wood, walls) and hair whose
  brightness differs from the face;
* the **HSV and YCrCb skin rules** of the earlier work (hue within 50 degrees of red,
  moderate saturation; 133 <= Cr <= 173, 77 <= Cb <= 127) with brightness floors low
  enough that dark skin passes (a floor at V >= 0.35 would drop ITA < -45 skin first,
  which is the very bias under study);
* ``b* > 0``: ITA is only defined for yellowish colours; a pixel with b* <= 0 is not skin.

An image is ``gray`` when the 90th-percentile chroma C*ab of its (slightly blurred)
measured region is below ``gray_chroma`` (a black-and-white photo, possibly with a
coloured synthetic mask pasted over it), and ``no_skin`` when fewer than
``min_skin_fraction`` of its pixels are skin. Both are unknown and counted, never given
a tone.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from skimage import color
from skimage.filters import gaussian, threshold_otsu

# (name, lowest ITA in degrees), from light to dark; "dark" is everything below -30.
CATEGORIES = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0),
              ("tan", 10.0), ("brown", -30.0), ("dark", -np.inf))
UNKNOWN = "unknown"
OK, GRAY, NO_SKIN = "ok", "gray", "no_skin"
CSV_COLUMNS = ("identity", "group", "median_ita", "ita_iqr", "skin_pixels", "images_used",
               "images_unknown", "images_gray", "images_no_skin")


@dataclasses.dataclass(frozen=True)
class Settings:
    mask_top: float = 0.5            # fraction of the height where the left-out region starts
    side_margin: float = 0.15        # fraction of the width left out on each side
    min_skin_fraction: float = 0.01  # of the image's pixels; fewer -> no_skin
    gray_chroma: float = 6.0         # 90th-percentile C*ab below this -> gray (skin: 15-30)

    def __post_init__(self):
        if not 0.0 < self.mask_top <= 1.0:
            raise ValueError(f"mask_top={self.mask_top} must be in (0, 1]: the fraction of "
                             "the image height from which rows are left out (1 = none).")
        if not 0.0 <= self.min_skin_fraction < 1.0:
            raise ValueError(f"min_skin_fraction={self.min_skin_fraction} must be in [0, 1).")
        if not 0.0 <= self.side_margin < 0.3:
            raise ValueError(f"side_margin={self.side_margin} must be in [0, 0.3): the "
                             "fraction of the width left out on each side.")


@dataclasses.dataclass(frozen=True)
class ImageTone:
    status: str                # OK, GRAY or NO_SKIN
    ita: Optional[float]       # degrees; None unless status is OK
    skin_pixels: int


@dataclasses.dataclass(frozen=True)
class IdentityTone:
    identity: str
    category: str              # one of CATEGORIES' names, or UNKNOWN
    median_ita: Optional[float]
    ita_iqr: Optional[float]
    skin_pixels: int
    images_used: int
    images_gray: int
    images_no_skin: int

    @property
    def images_unknown(self) -> int:
        return self.images_gray + self.images_no_skin


# ------------------------------------------------------------------------ one image


def _as_float_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected one (height, width, 3) RGB image, got shape {rgb.shape}; "
                         "convert grayscale or RGBA images to RGB first.")
    if rgb.dtype == np.uint8:
        return rgb / 255.0
    return np.clip(rgb.astype(np.float64), 0.0, 1.0)  # floats are taken as 0..1


def ita_degrees(lightness, b_star):
    """ITA = arctan((L* - 50) / b*) in degrees; meaningful for b* > 0 only."""
    return np.degrees(np.arctan((np.asarray(lightness) - 50.0) / np.asarray(b_star)))


def category(ita: Optional[float]) -> str:
    """ITA in degrees -> category name; None or NaN -> UNKNOWN. Edges belong to the darker side."""
    if ita is None or np.isnan(ita):
        return UNKNOWN
    return next(name for name, lowest in CATEGORIES if ita > lowest)


def measured_region(shape, mask_top: float, side_margin: float = 0.0) -> np.ndarray:
    """Rows above ``mask_top``, inside the side margins: the part of a face no mask covers."""
    height, width = shape[:2]
    side = int(round(side_margin * width))
    region = np.zeros((height, width), bool)
    region[:int(round(mask_top * height)), side:width - side] = True
    return region


def _core(shape, mask_top: float) -> np.ndarray:
    # Between and above the eyes: skin on an aligned face whatever the hair and background.
    height, width = shape[:2]
    core = np.zeros((height, width), bool)
    core[int(0.2 * height):int(round(mask_top * height)), int(0.3 * width):int(0.7 * width)] = True
    return core


def skin_rules(rgb: np.ndarray) -> np.ndarray:
    """Pixel-wise HSV AND YCrCb skin rules on a float RGB image (see the module docstring)."""
    hsv = color.rgb2hsv(rgb)
    hue = hsv[..., 0] * 360.0
    by_hsv = (((hue <= 50.0) | (hue >= 340.0)) & (hsv[..., 1] >= 0.10)
              & (hsv[..., 1] <= 0.75) & (hsv[..., 2] >= 0.15))
    # skimage's YCbCr is studio range (16..240); the classic Chai & Ngan bounds on it are
    # ~1 unit wider than on full range, well inside the spread of real skin.
    ycbcr = color.rgb2ycbcr(rgb)
    cb, cr = ycbcr[..., 1], ycbcr[..., 2]
    by_ycbcr = (cr >= 133.0) & (cr <= 173.0) & (cb >= 77.0) & (cb <= 127.0)
    return by_hsv & by_ycbcr


def otsu_foreground(rgb: np.ndarray, skin: np.ndarray, region: np.ndarray,
                    core: np.ndarray) -> np.ndarray:
    """The Otsu half (grey levels within ``region``) holding more ``skin`` pixels in ``core``."""
    gray = color.rgb2gray(rgb)
    values = gray[region]
    if values.size == 0 or values.min() == values.max():
        return region.copy()  # nothing to split
    bright = gray > threshold_otsu(values)
    # Which half is the face differs by tone and background. Counting skin-coloured pixels
    # only in the core matters: over the whole region, light-brown hair outvotes an
    # over-exposed face and the hair becomes the "skin".
    votes = skin & core
    if (votes & bright).sum() >= (votes & ~bright).sum():
        return region & bright
    return region & ~bright


def is_gray(rgb: np.ndarray, region: np.ndarray, threshold: float) -> bool:
    """Whether the region has no colour: its 90th-percentile chroma C*ab is below ``threshold``.

    The 90th percentile, not the median: a colour photo whose upper half is mostly dark
    hair and a white wall still has a face of chroma ~15-30 in its top decile. Chroma is
    read after a small blur, because sensor noise that differs per channel gives a gray
    photo a chroma of ~10 pixel by pixel but averages out over a few pixels.
    """
    smooth = gaussian(rgb, sigma=max(1.0, rgb.shape[0] / 56), channel_axis=-1)
    lab = color.rgb2lab(smooth)
    chroma = np.hypot(lab[..., 1], lab[..., 2])[region]
    return chroma.size == 0 or float(np.percentile(chroma, 90)) < threshold


def measure(rgb, settings: Settings = Settings()) -> tuple[ImageTone, np.ndarray]:
    """(tone, skin mask) of one RGB image (uint8, or float in 0..1)."""
    rgb = _as_float_rgb(rgb)
    region = measured_region(rgb.shape, settings.mask_top, settings.side_margin)
    if is_gray(rgb, region, settings.gray_chroma):
        return ImageTone(GRAY, None, 0), np.zeros(region.shape, bool)
    lab = color.rgb2lab(rgb)
    skin = region & skin_rules(rgb) & (lab[..., 2] > 0)
    skin &= otsu_foreground(rgb, skin, region, _core(rgb.shape, settings.mask_top))
    count = int(skin.sum())
    if count == 0 or count < settings.min_skin_fraction * skin.size:
        return ImageTone(NO_SKIN, None, count), skin
    # Median of per-pixel ITA: robust to the few pixels (eyebrows, highlights) that pass.
    ita = float(np.median(ita_degrees(lab[..., 0][skin], lab[..., 2][skin])))
    return ImageTone(OK, ita, count), skin


def measure_records(records: Sequence, image_size: int, settings: Settings = Settings(), *,
                    chunk: int = 512, progress: bool = True) -> List[ImageTone]:
    """Tones of ``records`` (anything with ``.path``), decoded ``chunk`` images at a time."""
    from tqdm.auto import tqdm

    from bt_jax.data.folder import load_images

    tones = []
    with tqdm(total=len(records), desc="skin tone", unit="img", disable=not progress) as bar:
        for start in range(0, len(records), chunk):
            images = load_images(records[start:start + chunk], image_size, progress=False)
            for image in images:
                tones.append(measure(image, settings)[0])
                bar.update()
    return tones


# ------------------------------------------------------------------------ per identity


def _identity_tone(identity: str, tones: Sequence[ImageTone]) -> IdentityTone:
    itas = np.asarray([t.ita for t in tones if t.status == OK])
    gray = sum(t.status == GRAY for t in tones)
    no_skin = sum(t.status == NO_SKIN for t in tones)
    if itas.size == 0:
        return IdentityTone(identity, UNKNOWN, None, None, 0, 0, gray, no_skin)
    q1, median, q3 = np.percentile(itas, [25, 50, 75])
    pixels = sum(t.skin_pixels for t in tones if t.status == OK)
    return IdentityTone(identity, category(median), float(median), float(q3 - q1), pixels,
                        int(itas.size), gray, no_skin)


def summarize(identities: Sequence[str], tones: Sequence[ImageTone]) -> List[IdentityTone]:
    """One row per identity (sorted by name): median ITA over its images with a tone."""
    if len(identities) != len(tones):
        raise ValueError(f"{len(identities)} identities for {len(tones)} tones; pass one "
                         "identity per measured image.")
    grouped: Dict[str, List[ImageTone]] = {}
    for identity, tone in zip(identities, tones):
        grouped.setdefault(identity, []).append(tone)
    return [_identity_tone(name, grouped[name]) for name in sorted(grouped)]


def _cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def write_csv(rows: Iterable[IdentityTone], path: str) -> None:
    """CSV_COLUMNS; ``group`` is the category, so the file is the evaluator's groups CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.identity, r.category, _cell(r.median_ita), _cell(r.ita_iqr),
                             r.skin_pixels, r.images_used, r.images_unknown, r.images_gray,
                             r.images_no_skin])


def category_counts(rows: Iterable[IdentityTone]) -> Dict[str, int]:
    """Identities per category, light to dark, then unknown; zero counts kept."""
    counts = {name: 0 for name, _ in CATEGORIES}
    counts[UNKNOWN] = 0
    for r in rows:
        counts[r.category] += 1
    return counts


# ------------------------------------------------------------------------ consistency

_INDEX = {name: i for i, (name, _) in enumerate(CATEGORIES)}


def _rates(pairs: int, same: int, within_one: int) -> Dict[str, float]:
    return {"pairs": pairs, "same": same / pairs if pairs else None,
            "within_one": within_one / pairs if pairs else None}


def _chance(index: np.ndarray) -> Dict[str, float]:
    # Two images drawn independently from the folder's category distribution.
    p = np.bincount(index, minlength=len(CATEGORIES)) / max(index.size, 1)
    near = sum(p[i] * p[j] for i in range(p.size) for j in range(p.size) if abs(i - j) <= 1)
    return {"same": float(p @ p), "within_one": float(near)}


def consistency(identities: Sequence[str], sources: Sequence[int],
                tones: Sequence[ImageTone]) -> Dict[str, Dict[str, float]]:
    """How often two images of one identity fall in the same, or an adjacent, category.

    ``different_source`` pairs (two photos) are the figure that matters; ``same_source``
    pairs are variants of one photo that differ only by the synthetic mask, so anything
    below 100% there means the mask leaks into the measurement. ``chance`` is the rate
    for two images drawn at random, what an uninformative tone would score.
    """
    index = np.asarray([_INDEX.get(category(t.ita), -1) for t in tones])
    counts = {"different_source": [0, 0, 0], "same_source": [0, 0, 0]}
    by_identity: Dict[str, List[int]] = {}
    for i, identity in enumerate(identities):
        if index[i] >= 0:
            by_identity.setdefault(identity, []).append(i)
    for members in by_identity.values():
        for i, j in itertools.combinations(members, 2):
            kind = counts["same_source" if sources[i] == sources[j] else "different_source"]
            gap = abs(int(index[i]) - int(index[j]))
            kind[0] += 1
            kind[1] += gap == 0
            kind[2] += gap <= 1
    result = {kind: _rates(*c) for kind, c in counts.items()}
    result["chance"] = _chance(index[index >= 0])
    return result


# ------------------------------------------------------------------------ contact sheet


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt


def _tone_text(tone: ImageTone) -> str:
    if tone.status != OK:
        return f"{UNKNOWN} ({tone.status.replace('_', ' ')})"
    return f"ITA {round(tone.ita)}, {category(tone.ita)}"  # round: no "-0"


def save_sheet(images: Sequence[np.ndarray], tones: Sequence[ImageTone],
               masks: Sequence[np.ndarray], labels: Sequence[str], path: str, *,
               mask_top: float, columns: int = 6) -> None:
    """Each image beside its skin mask (non-skin dimmed, red line: left-out region below)."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.6 * columns, 1.75 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, tone, mask, label) in enumerate(zip(images, tones, masks, labels)):
        row, column = divmod(k, columns)
        left, right = axes[row, 2 * column], axes[row, 2 * column + 1]
        shown = np.where(mask[..., None], image, (image * 0.2).astype(image.dtype))
        left.imshow(image)
        right.imshow(shown)
        right.axhline(mask_top * image.shape[0] - 0.5, color="red", linewidth=0.8)
        left.set_title(label[:22], fontsize=6)
        right.set_title(_tone_text(tone), fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
