"""The images identify takes: aligned face crops, found in folders, read and embedded in
batches so that memory does not grow with the number of images.

Every file is named by its real path (a folder reached through a symlink is the same
folder) and known by the sha256 of its bytes (a copy of an enrolled image is the same
image).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bt_jax.data.folder import decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The open-set answer; a person of that name would read like it.
UNKNOWN = "unknown"
# Crops decoded and embedded at a time: bounds the pixels held at once (~40 KB a 112 px
# crop, more after resizing) whatever the number of images.
CHUNK = 256


def list_enrolment(folder: str) -> List[Tuple[str, str]]:
    """(identity, real path) of every image in ``folder/<identity>/``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; give one with a sub-folder per "
                                "person (<identity>/<image>).")
    people = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
    if any(p.lower() == UNKNOWN for p in people):
        raise ValueError(f"{os.path.join(folder, UNKNOWN)}: a person may not be called "
                         f"'{UNKNOWN}', the answer for a face nobody enrolled matches; rename "
                         "the folder.")
    found = [(name, os.path.realpath(os.path.join(folder, name, f)))
             for name in people for f in sorted(os.listdir(os.path.join(folder, name)))
             if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise ValueError(f"{folder} holds no images in <identity>/<image> sub-folders "
                         f"(suffixes {', '.join(IMAGE_SUFFIXES)}).")
    return found


def list_queries(paths: Sequence[str]) -> List[str]:
    """Image files named directly or found (recursively, sorted) in named folders."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += sorted(os.path.join(root, f) for root, _, files in os.walk(path)
                          for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder.")
    if not out:
        raise ValueError(f"no images found in {', '.join(paths)}.")
    return out


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_crop(path: str, crop_size: int, image_size: int) -> Tuple[np.ndarray, str]:
    """(uint8 (image_size, image_size, 3), sha256 of the file) of an aligned crop;
    ValueError naming the file if it is unreadable or not a crop_size square."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as image:  # the size from the header alone
            size = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from None
    if size != (crop_size, crop_size):
        raise ValueError(f"{path} is {size[0]}x{size[1]}, not an aligned {crop_size}x"
                         f"{crop_size} face crop (config.data.crop_size); for ordinary photos "
                         "pass --photos (faces are found and aligned), or align them first "
                         "with scripts/align.py.")
    return decode_image(data, image_size, path), file_digest(data)


def read_crops(paths: Sequence[str], crop_size: int,
               image_size: int) -> Tuple[np.ndarray, List[int], Dict[str, str]]:
    """(images of the readable crops, their positions in ``paths``, {skipped path: why})."""
    images, kept, skipped = [], [], {}
    for i, path in enumerate(paths):
        try:
            images.append(read_crop(path, crop_size, image_size)[0])
            kept.append(i)
        except (OSError, ValueError) as error:
            skipped[path] = str(error)
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return (np.stack(images) if images else empty), kept, skipped


class Face(NamedTuple):
    """One face to embed: its key (the file's path, or ``path#k`` for face k of a photo),
    pixels at the embedder's image size, the file's sha256, and where it was found in a
    photo (None for an aligned crop)."""
    key: str
    pixels: np.ndarray
    digest: str
    where: Optional[Dict[str, Any]] = None


class CropReader:
    """path -> [Face] of an aligned crop file (identify's default input)."""

    def __init__(self, preprocessing: Dict):
        self.crop_size, self.image_size = preprocessing["crop_size"], preprocessing["image_size"]

    def __call__(self, path: str) -> List[Face]:
        pixels, digest = read_crop(path, self.crop_size, self.image_size)
        return [Face(path, pixels, digest)]


class Embedded(NamedTuple):
    """One batch: features (n, D), and the keys, sha256 and places of the faces."""
    features: np.ndarray
    paths: List[str]
    hashes: List[str]
    where: List[Optional[Dict[str, Any]]]


def embed_stream(embed: Callable[[np.ndarray], np.ndarray], paths: Sequence[str],
                 preprocessing: Dict, skipped: Dict[str, str], *, known: Sequence[str] = (),
                 dedupe: bool = True, chunk: int = CHUNK,
                 reader: Optional[Callable[[str], List[Face]]] = None) -> Iterator[Embedded]:
    """Batches of embedded faces, read ``chunk`` files at a time by ``reader`` (default:
    aligned crops). Unreadable files go to ``skipped`` with the reason; with ``dedupe``,
    faces whose file's hash is in ``known`` or repeats an earlier file are skipped as
    duplicates."""
    read = reader or CropReader(preprocessing)
    seen = set(known)
    for start in range(0, len(paths), chunk):
        faces: List[Face] = []
        for path in paths[start:start + chunk]:
            try:
                found = read(path)
            except (OSError, ValueError) as error:
                skipped[path] = str(error)
                continue
            if dedupe and found and found[0].digest in seen:
                skipped[path] = "the same image (sha256) is already in the gallery or listed"
                continue
            seen.update(f.digest for f in found)
            faces += found
        if faces:
            yield Embedded(np.asarray(embed(np.stack([f.pixels for f in faces])), np.float32),
                           [f.key for f in faces], [f.digest for f in faces],
                           [f.where for f in faces])


def embed_all(embed: Callable[[np.ndarray], np.ndarray], paths: Sequence[str],
              preprocessing: Dict) -> Tuple[np.ndarray, List[str], Dict[str, str]]:
    """(features, kept paths, skipped {path: why}) of every readable crop, in order."""
    skipped: Dict[str, str] = {}
    batches = list(embed_stream(embed, paths, preprocessing, skipped, dedupe=False))
    if not batches:
        return np.zeros((0, 0), np.float32), [], skipped
    return (np.concatenate([b.features for b in batches]),
            [p for b in batches for p in b.paths], skipped)
