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
import io
import os
import pathlib
import re
import threading
import warnings
from typing import Callable, Sequence

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
    try:
        return (not entry.name.startswith(".") and entry.is_file()
                and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)
    except OSError:  # a symlink loop is no image; decoding would fail on it anyway
        return False


def _list_identities(root: pathlib.Path) -> dict[str, list[str]]:
    """{identity: sorted image file names} for every folder holding images."""
    found = {}
    try:
        with os.scandir(root) as entries:
            folders = [e for e in entries if _is_folder(e)]
        for folder in folders:
            with os.scandir(folder.path) as entries:
                names = sorted(e.name for e in entries if _is_image(e))
            if names:
                found[folder.name] = names
    except OSError as error:  # a symlink loop, a folder without read permission
        raise FileNotFoundError(f"cannot list image folder {root}: {error}. Fix or remove "
                                "that entry.") from None
    return found


def _is_folder(entry: os.DirEntry) -> bool:
    if entry.name.startswith("."):
        return False
    try:
        return entry.is_dir() and os.path.isdir(os.path.realpath(entry.path))
    except OSError:
        return False


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


def decode_image(data: bytes, size: int, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 (size, size, 3) RGB; ValueError naming ``name`` if bad.

    One decoder for every source (files, TFDS records), so that they yield
    identical pixels. Non-square images are stretched (bilinear).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            # JPEG can decode at 1/2..1/8 scale for free when shrinking a lot.
            image.draft("RGB", (size, size))
            image = image.convert("RGB")     # grayscale and palette images -> 3 channels
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        why = ("the file is empty (0 bytes)" if not data else
               f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        raise ValueError(f"cannot decode image {name}: {why}. Replace or delete the "
                         "file, or list it in config.data.exclude_file "
                         "(scripts/clean_data.py writes that list).") from error


class SkippingDecoder:
    """``decode_image`` by position, for loaders that skip unreadable images.

    ``read(i)`` gives the encoded bytes of image ``i`` and ``names[i]`` its name. A
    failure is recorded in ``skipped`` (name -> why) and the image is not decoded
    again: the streaming loader asks for the same image every epoch, and a second
    decode would only repeat the error. Threads may share one decoder.
    """

    def __init__(self, read: Callable[[int], bytes], names: Sequence[str], size: int, *,
                 on_skip: Callable[[str, str, int], None] | None = None):
        self.read, self.names, self.size = read, names, int(size)
        self.on_skip = on_skip                # (name, why, skipped so far), once per name
        self.skipped: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, index: int) -> np.ndarray:
        """uint8 (size, size, 3) of image ``index``; ValueError saying why if unreadable."""
        name = self.names[index]
        if name in self.skipped:
            raise ValueError(self.skipped[name])
        try:
            return decode_image(self.read(index), self.size, name)
        except (OSError, ValueError, KeyError) as error:
            # read() may raise a bare KeyError or OSError: keep at least its type.
            why = str(error) or type(error).__name__
            with self._lock:
                first = name not in self.skipped
                self.skipped[name] = why
                count = len(self.skipped)
            if first and self.on_skip is not None:
                self.on_skip(name, why, count)
            raise ValueError(why) from error

    def try_decode(self, index: int) -> np.ndarray | None:
        """Like calling the decoder, but None for an unreadable image."""
        try:
            return self(index)
        except ValueError:
            return None


def _load_one(path: str, size: int) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}. Replace or delete the "
                         "file.") from error
    return decode_image(data, size, path)


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

