"""Load a face folder ``root/<identity>/<Name>_SSSS_VVVV.jpg`` and pair it for Barlow Twins.

The same layout serves the real MLFW data and the synthetic generator
(``bt_jax.data.synthetic``): ``SSSS`` is the source photo and ``VVVV`` a
variant of it (unmasked or another mask). ``Name`` may itself contain
underscores, so the two 4-digit fields are parsed from the right.

``root/masked.txt`` (written by the synthetic generator, absent in the real
data) lists the masked images as ``<identity>/<file>``, one a line; with it,
every record knows whether it is masked, without it ``masked`` is ``None``.

Naming rules, chosen so that mistakes surface instead of silently losing data:

* hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) and files that are not
  images (``.jpg .jpeg .png .bmp .webp``) are ignored silently;
* an image whose name does not match ``<Name>_SSSS_VVVV`` raises ``ValueError``;
* only ``root/<identity>/<file>`` is read: files directly under ``root`` and
  deeper sub-folders are ignored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import warnings
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MASKED_LIST = "masked.txt"
_NAME = re.compile(r"^(?P<name>.+)_(?P<source>\d{4})_(?P<variant>\d{4})$")
_LAYOUT_HINT = ("Point the data setting (e.g. config.data.train_dir / val_dir) at a folder laid "
                "out as <identity>/<Name>_SSSS_VVVV.jpg, or use config.data.source='synthetic' "
                "(bt_jax.data.synthetic.write_synthetic_dataset) to generate one.")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of the folder.

    ``path`` is absolute (the resolved root joined with identity and file), so
    records stay valid whatever the working directory.
    """
    path: str
    identity: str
    label: int            # dense id of the identity, in sorted name order
    source: int           # SSSS: the source photo
    variant: int          # VVVV: a variant of that photo
    masked: bool | None   # from root/masked.txt when present, else None (unknown)


def parse_image_name(filename: str) -> tuple[str, int, int]:
    """``'Abdel_Aziz_Al-Hakim_0001_0000.jpg'`` -> ``('Abdel_Aziz_Al-Hakim', 1, 0)``."""
    match = _NAME.match(pathlib.PurePath(filename).stem)
    if match is None:
        raise ValueError(
            f"image {filename!r} does not match <Name>_SSSS_VVVV.<ext> (SSSS = source photo, "
            "VVVV = variant, 4 digits each, e.g. Abdel_Aziz_Al-Hakim_0001_0000.jpg); "
            "rename it or move it out of the data folder.")
    return match["name"], int(match["source"]), int(match["variant"])


def _is_image(entry: os.DirEntry) -> bool:
    return (not entry.name.startswith(".") and entry.is_file()
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)


def _list_identities(root: pathlib.Path) -> dict[str, list[str]]:
    """{identity: sorted image file names} for every folder holding images."""
    found = {}
    with os.scandir(root) as entries:
        folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    for folder in folders:
        with os.scandir(folder.path) as entries:
            names = sorted(e.name for e in entries if _is_image(e))
        if names:
            found[folder.name] = names
    return found


def _check_root(root: pathlib.Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist. {_LAYOUT_HINT}")


def _no_images_error(root: pathlib.Path) -> FileNotFoundError:
    with os.scandir(root) as entries:
        loose = any(_is_image(e) for e in entries)
    hint = (" It holds images directly: it looks like one identity's folder, so point at "
            "its parent instead." if loose else "")
    return FileNotFoundError(f"image folder {root} has no <identity>/<image> files.{hint} "
                             f"{_LAYOUT_HINT}")


def _read_masked_list(root: pathlib.Path) -> set[str] | None:
    path = root / MASKED_LIST
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return {line.strip().replace("\\", "/") for line in lines if line.strip()}


def _drop_small(found: dict[str, list[str]], minimum: int) -> dict[str, list[str]]:
    """Drop identities with fewer than ``minimum`` images, with one warning."""
    small = sorted(name for name, files in found.items() if len(files) < minimum)
    if small:
        shown = ", ".join(small[:5]) + (", ..." if len(small) > 5 else "")
        warnings.warn(f"skipped {len(small)} of {len(found)} identities with fewer than "
                      f"{minimum} images (min_images_per_identity): {shown}", stacklevel=3)
    return {name: files for name, files in found.items() if len(files) >= minimum}


def scan_folder(root, *, min_images_per_identity: int = 2) -> list[ImageRecord]:
    """Records of ``root/<identity>/<Name>_SSSS_VVVV.<ext>``, sorted by identity, source, variant.

    Raises FileNotFoundError for a missing folder or one without images, and
    ValueError for an image with a malformed name (see the module docstring).
    """
    root = pathlib.Path(root).expanduser().resolve()
    _check_root(root)
    found = _list_identities(root)
    if not found:
        raise _no_images_error(root)
    kept = _drop_small(found, min_images_per_identity)
    if not kept:
        raise ValueError(f"no identity in {root} has at least min_images_per_identity="
                         f"{min_images_per_identity} images; lower it or add images.")
    masked_list = _read_masked_list(root)
    records = []
    for label, identity in enumerate(sorted(kept)):
        for name in kept[identity]:
            _, source, variant = parse_image_name(os.path.join(root, identity, name))
            masked = None if masked_list is None else f"{identity}/{name}" in masked_list
            records.append(ImageRecord(str(root / identity / name), identity, label,
                                       source, variant, masked))
    records.sort(key=lambda r: (r.label, r.source, r.variant, r.path))
    return records


def _load_one(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")     # grayscale and palette images -> 3 channels
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image {path}: {error}. Replace or delete the "
                         "file.") from error


def load_images(records: Sequence[ImageRecord], image_size: int, *, progress: bool = True,
                num_threads: int | None = None) -> np.ndarray:
    """Decode ``records`` into a uint8 (N, image_size, image_size, 3) RGB array.

    Images of another size are resized (bilinear; non-square ones are
    stretched). Pillow releases the GIL while decoding, so threads help.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    from tqdm.auto import tqdm

    out = np.empty((len(records), image_size, image_size, 3), np.uint8)
    threads = num_threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        decoded = pool.map(_load_one, [r.path for r in records], [image_size] * len(records))
        for i, pixels in enumerate(tqdm(decoded, total=len(records), desc="loading images",
                                        unit="img", disable=not progress)):
            out[i] = pixels
    return out


# --------------------------------------------------------------- pair sampling

PAIR_MODES = ("standard", "all_pairs")


class _Identity:
    """Indices of one identity's images with what the pair preferences need."""

    def __init__(self, indices, sources, masked):
        self.indices = np.asarray(indices, np.int64)
        self.sources = np.asarray(sources)
        # 1 masked, 0 unmasked, -1 unknown.
        self.masked = np.asarray([-1 if m is None else int(m) for m in masked], np.int8)
        different = self.sources[:, None] != self.sources[None, :]
        known = (self.masked[:, None] >= 0) & (self.masked[None, :] >= 0)
        mixed = known & (self.masked[:, None] != self.masked[None, :])
        # Different source photos matter most: two variants of one photo are
        # near-duplicates. A masked/unmasked mix comes second.
        self.tier = 2.0 * different + mixed


def _pick_pairs(ident: _Identity, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Greedily pick ``count`` disjoint pairs of the best available tier.

    Ties go to images of the sources with most images left, so that small
    sources are not used up early and leave same-source pairs at the end.
    """
    n = len(ident.indices)
    free = np.ones(n, bool)
    pairs = []
    source_id = np.unique(ident.sources, return_inverse=True)[1]
    for _ in range(count):
        crowd = np.bincount(source_id, weights=free)[source_id]
        # Tier first, then crowded sources, then chance: crowd + noise < 2n + 1.
        score = ident.tier * (2 * n + 1) + crowd[:, None] + crowd[None, :] + rng.random((n, n))
        score[~free, :] = score[:, ~free] = -np.inf
        np.fill_diagonal(score, -np.inf)
        a, b = np.unravel_index(np.argmax(score), score.shape)
        free[[a, b]] = False
        pairs.append(_order(ident, a, b, rng))
    return pairs


def _order(ident: _Identity, a: int, b: int, rng: np.random.Generator) -> tuple[int, int]:
    """Unmasked image first when the flags say so, else a random order."""
    ma, mb = ident.masked[a], ident.masked[b]
    if ma >= 0 and mb >= 0 and ma != mb:
        first_a = ma == 0
    else:
        first_a = rng.random() < 0.5
    a, b = (a, b) if first_a else (b, a)
    return int(ident.indices[a]), int(ident.indices[b])


class PairDataset:
    """Positive pairs (two images of one identity) over preloaded images.

    ``pairs_per_identity``: ``'standard'`` draws one pair per identity per
    epoch; ``'all_pairs'`` draws floor(n / 2) disjoint pairs per identity.
    A pair never repeats an image, prefers two different source photos and,
    when masked flags are known, one masked with one unmasked image
    (unmasked first). Pairs depend only on (seed, epoch) and are shuffled.
    Identities with a single image cannot form a pair and are left out.
    """

    def __init__(self, records: Sequence[ImageRecord], images: np.ndarray, *, seed: int,
                 pairs_per_identity: str = "standard"):
        if pairs_per_identity not in PAIR_MODES:
            raise ValueError(f"pairs_per_identity={pairs_per_identity!r} is unknown; "
                             f"use one of {PAIR_MODES}.")
        if len(records) != len(images):
            raise ValueError(f"{len(records)} records but {len(images)} images: load the "
                             "images from the same records (load_images(records, size)).")
        self.records, self.images = list(records), images
        self.seed, self.mode = int(seed), pairs_per_identity
        by_label = {}
        for i, record in enumerate(self.records):
            by_label.setdefault(record.label, []).append(i)
        self._identities = [
            _Identity(idx, [self.records[i].source for i in idx],
                      [self.records[i].masked for i in idx])
            for _, idx in sorted(by_label.items()) if len(idx) >= 2]
        self.pairs_per_epoch = sum(self._pairs_of(ident) for ident in self._identities)

    def _pairs_of(self, ident: _Identity) -> int:
        return 1 if self.mode == "standard" else len(ident.indices) // 2

    def epoch_pairs(self, epoch: int) -> np.ndarray:
        """int64 (P, 2) indices into ``records``/``images`` for ``epoch``."""
        rng = np.random.default_rng((self.seed, int(epoch)))
        pairs = [pair for ident in self._identities
                 for pair in _pick_pairs(ident, self._pairs_of(ident), rng)]
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        return pairs[rng.permutation(len(pairs))]

    def steps_per_epoch(self, global_batch: int) -> int:
        """Full batches per epoch; the remainder of the pairs is dropped."""
        if global_batch < 1 or self.pairs_per_epoch // global_batch == 0:
            raise ValueError(
                f"{self.pairs_per_epoch} pairs per epoch ({self.mode!r} over "
                f"{len(self._identities)} identities with >= 2 images) do not fill one batch "
                f"of global_batch={global_batch}; lower the batch size, add identities or "
                "use pairs_per_identity='all_pairs'.")
        return self.pairs_per_epoch // global_batch

    def batches(self, epoch: int, global_batch: int, *,
                start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (view1, view2) uint8 (global_batch, S, S, 3) for the rest of ``epoch``.

        ``start_step`` skips that many batches without gathering them, so a
        resumed run sees exactly the batches it would have seen.
        """
        steps = self.steps_per_epoch(global_batch)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step={start_step} is outside 0..{steps} "
                             f"(steps per epoch at global_batch={global_batch}).")
        pairs = self.epoch_pairs(epoch)
        for step in range(start_step, steps):
            chosen = pairs[step * global_batch:(step + 1) * global_batch]
            yield self.images[chosen[:, 0]], self.images[chosen[:, 1]]
