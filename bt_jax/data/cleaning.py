"""Find images to exclude: unreadable, very poor, exact and near duplicates.

Checks, per image and within each identity (``scripts/clean_data.py`` runs them
and writes the exclusion list that every source honours):

* unreadable: the file does not decode;
* poor: near-uniform (grayscale std below ``min_std``), very blurred (variance
  of the Laplacian below ``min_sharpness``) or mostly padding (more than
  ``max_padding`` of the pixels black, e.g. a failed alignment that left a
  small rotated face in a black frame);
* exact duplicates: identical pixels (a SHA-1 of the decoded RGB, so re-saved
  files with other metadata still match); the first in (source, variant)
  order is kept;
* near-duplicate source photos: two *different* source photos of one identity
  whose images are within ``phash_distance`` bits by a 64-bit perceptual hash
  (imagehash.phash): LFW holds a few photos twice under two numbers, and such a
  pair would pass the ``source_aware`` sampler as two photos. Every image of
  the later source is excluded.

Variants of one source photo are near-duplicates by design (the same photo
with different masks; a perceptual hash barely sees the mask): they are not
excluded, the ``source_aware`` sampler keeps them out of the same pair.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import os
from typing import Callable, Sequence

import imagehash
import numpy as np
from PIL import Image

from bt_jax.data.exclusions import record_key


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_std: float = 10.0          # grayscale standard deviation, 0..255
    min_sharpness: float = 30.0    # variance of the 4-neighbour Laplacian of the grayscale
    max_padding: float = 0.55      # fraction of black pixels (all channels < 12)
    phash_distance: int = 8        # near-duplicate source photos: at most this many bits


@dataclasses.dataclass(frozen=True)
class ImageStats:
    key: str                       # <identity>/<file>
    identity: str
    source: int
    variant: int
    error: str = ""                # why it could not be decoded; '' when it could
    pixel_hash: str = ""
    phash: int = 0
    std: float = 0.0
    sharpness: float = 0.0
    padding: float = 0.0


def image_stats(record, data: bytes) -> ImageStats:
    """Hashes and quality measures of one image (at its stored size)."""
    base = dict(key=record_key(record), identity=record.identity, source=record.source,
                variant=record.variant)
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return ImageStats(**base, error=str(error) or type(error).__name__)
    pixels = np.asarray(rgb)
    gray = np.asarray(rgb.convert("L"), np.float32)
    laplacian = (4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
                 - gray[1:-1, :-2] - gray[1:-1, 2:])
    return ImageStats(**base, pixel_hash=hashlib.sha1(pixels.tobytes()).hexdigest(),
                      phash=int(str(imagehash.phash(rgb)), 16), std=float(gray.std()),
                      sharpness=float(laplacian.var()) if laplacian.size else 0.0,
                      padding=float((pixels.max(-1) < 12).mean()))


def collect_stats(records: Sequence, read: Callable[[int], bytes], *, threads: int = 0,
                  progress: bool = True) -> list[ImageStats]:
    """``image_stats`` of every record, decoded in a thread pool (Pillow drops the GIL)."""
    from tqdm.auto import tqdm

    def one(i):
        try:
            data = read(i)
        except OSError as error:
            return ImageStats(record_key(records[i]), records[i].identity, records[i].source,
                              records[i].variant, error=str(error))
        return image_stats(records[i], data)

    workers = threads or min(8, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(one, range(len(records))), total=len(records), unit="img",
                         desc="checking images", disable=not progress))


def _quality_problem(s: ImageStats, th: Thresholds) -> tuple[str, str] | None:
    if s.error:
        return "unreadable", s.error
    if s.std < th.min_std:
        return "near-uniform", f"grayscale std {s.std:.1f} < {th.min_std}"
    if s.sharpness < th.min_sharpness:
        return "blurred", f"Laplacian variance {s.sharpness:.1f} < {th.min_sharpness}"
    if s.padding > th.max_padding:
        return "mostly padding", f"{s.padding:.0%} black pixels > {th.max_padding:.0%}"
    return None


def _exact_duplicates(stats: list[ImageStats]) -> dict[str, tuple[str, str]]:
    """{key: problem} for every copy after the first of identical pixels in an identity."""
    first, found = {}, {}
    for s in sorted(stats, key=lambda s: (s.identity, s.source, s.variant, s.key)):
        kept = first.setdefault((s.identity, s.pixel_hash), s.key)
        if kept != s.key:
            found[s.key] = ("exact duplicate", f"same pixels as {kept}")
    return found


def _near_duplicate_sources(stats: list[ImageStats],
                            max_distance: int) -> dict[str, tuple[str, str]]:
    """{key: problem} for every image of a source photo that repeats an earlier one."""
    by_source = collections.defaultdict(list)
    for s in stats:
        by_source[(s.identity, s.source)].append(s)
    found, kept = {}, collections.defaultdict(list)
    for (identity, source) in sorted(by_source):
        group = by_source[(identity, source)]
        hashes = np.array([s.phash for s in group], np.uint64)
        for earlier, earlier_hashes in kept[identity]:
            distance = _min_hamming(hashes, earlier_hashes)
            if distance <= max_distance:
                for s in group:
                    found[s.key] = ("near-duplicate source", f"photo {source:04d} of "
                                    f"{identity} repeats {earlier:04d} (phash distance "
                                    f"{distance})")
                break
        else:
            kept[identity].append((source, hashes))
    return found


def _min_hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Smallest Hamming distance between any 64-bit hash of ``a`` and any of ``b``."""
    xor = a[:, None] ^ b[None, :]
    bits = np.unpackbits(xor.view(np.uint8).reshape(xor.shape + (8,)), axis=-1)
    return int(bits.sum(-1).min())


def find_problems(stats: list[ImageStats],
                  th: Thresholds = Thresholds()) -> dict[str, tuple[str, str]]:
    """{key: (kind, detail)} of every image to exclude, each with its first problem.

    Kinds: unreadable, near-uniform, blurred, mostly padding, exact duplicate,
    near-duplicate source. Duplicates are looked for among the good images only.
    """
    problems = {s.key: found for s in stats if (found := _quality_problem(s, th))}
    good = [s for s in stats if s.key not in problems]
    problems.update(_exact_duplicates(good))
    good = [s for s in good if s.key not in problems]
    problems.update(_near_duplicate_sources(good, th.phash_distance))
    return problems


def summarize(problems: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Images per kind of problem."""
    return dict(sorted(collections.Counter(kind for kind, _ in problems.values()).items()))
