"""Resolve ``config.data.source`` into one interface: an ``ImageSource`` per split.

Sources (``config.data.source``):

* ``'folder'``: ``<split dir>/<identity>/<Name>_SSSS_VVVV.jpg`` (train_dir, val_dir, eval_dir);
* ``'synthetic'``: the same layout, generated under the workdir;
* ``'mlfw_release'``: the official release, ``manual_dir/aligned/`` + ``pairs.txt``
  (see ``bt_jax.data.release``);
* ``'tfds'``: the ``mlfw`` TFDS builder (ArrayRecord, no TensorFlow), prepared once
  under ``tfds_dir`` from ``manual_dir`` in either layout (``bt_jax.data.tfds_mlfw``).

Every source then goes through the same steps: the exclusion list
(``config.data.exclude_file``), identities with fewer than
``min_images_per_identity`` images left out with one summary line, labels
numbered by sorted identity. So the folder and TFDS sources of one data set
give the same records, labels included.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import shutil
import warnings
from typing import Callable, Dict

import numpy as np

from bt_jax.data.exclusions import kept_indices, read_exclusions
from bt_jax.data.folder import SkippingDecoder, scan_folder
from bt_jax.data.pairs import PairDataset
from bt_jax.data.synthetic import write_synthetic_dataset

SOURCES = ("folder", "synthetic", "mlfw_release", "tfds")


def _write_once(root: str, **kwargs) -> str:
    """Generate a synthetic split unless a complete one exists; atomic via rename."""
    if os.path.exists(os.path.join(root, "masked.txt")):
        return root
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_synthetic_dataset(tmp, **kwargs)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def synthetic_dirs(config, workdir: str) -> Dict[str, str]:
    """Train, val and eval splits of disjoint synthetic identities under ``workdir``."""
    syn = config.data.synthetic
    common = dict(sources_per_identity=syn.sources_per_identity,
                  masked_variants=syn.masked_variants, image_size=config.data.image_size,
                  seed=syn.seed, progress=config.train.progress)
    root = os.path.join(workdir, "synthetic_data")
    first = 0
    dirs = {}
    for split in ("train", "val", "eval"):
        count = syn[f"{split}_identities"]
        dirs[split] = _write_once(os.path.join(root, split), num_identities=count,
                                  first_identity=first, **common)
        first += count
    return dirs


def data_dirs(config, workdir: str) -> Dict[str, str]:
    """{'train', 'val', 'eval'} folders for ``config.data.source``."""
    source = config.data.source
    if source == "synthetic":
        return synthetic_dirs(config, workdir)
    if source == "folder":
        return {"train": config.data.train_dir, "val": config.data.val_dir,
                "eval": config.data.eval_dir or config.data.val_dir}
    raise ValueError(f"config.data.source={source!r} has no split folders: data_dirs() serves "
                     f"'folder' and 'synthetic'; open_split() serves all of {SOURCES}.")


# ------------------------------------------------------------------ one interface


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """The records of one split and how to read each one's encoded image bytes."""
    name: str                          # where it came from, for messages
    records: list                      # ImageRecord, labels dense from 0
    read: Callable[[int], bytes]       # read(i): encoded bytes of records[i]


def _file_reader(paths: list[str]) -> Callable[[int], bytes]:
    def read(i: int) -> bytes:
        with open(paths[i], "rb") as f:
            return f.read()
    return read


def finalize(name: str, records, read, *, excluded: set, min_images: int) -> ImageSource:
    """Apply the exclusion list, leave out small identities (one summary line) and
    number the labels by sorted identity."""
    kept = kept_indices(records, excluded)
    counts = collections.Counter(records[i].identity for i in kept)
    small = sorted(k for k, n in counts.items() if n < min_images)
    if small:
        shown = ", ".join(small[:5]) + (", ..." if len(small) > 5 else "")
        warnings.warn(f"{name}: left {len(small)} of {len(counts)} identities with fewer than "
                      f"{min_images} images (min_images_per_identity, after "
                      f"{len(records) - len(kept)} excluded images) out of pairing: {shown}",
                      stacklevel=3)
    labels = {k: i for i, k in enumerate(sorted(set(counts) - set(small)))}
    order = [i for i in kept if records[i].identity in labels]
    if not order:
        raise ValueError(f"{name}: no identity has min_images_per_identity={min_images} "
                         "images left; lower it, add images or shorten the exclusion list.")
    final = [dataclasses.replace(records[i], label=labels[records[i].identity]) for i in order]
    return ImageSource(name, final, lambda i: read(order[i]))


def holdout_indices(records, fraction: float, seed: int):
    """(kept, held out) indices into ``records``: ``fraction`` of the identities (at least
    one, chosen by ``seed``) held out, for tuning on train data without touching val."""
    if not 0 < fraction < 1:
        raise ValueError(f"config.data.holdout_fraction={fraction} must be in (0, 1).")
    identities = sorted({r.identity for r in records})
    count = max(1, round(fraction * len(identities)))
    if count >= len(identities):
        raise ValueError(f"holding out {count} of {len(identities)} identities leaves none to "
                         "train on; lower config.data.holdout_fraction.")
    held = set(np.random.default_rng(seed).choice(identities, count, replace=False))
    flags = np.asarray([r.identity in held for r in records])
    return np.flatnonzero(~flags), np.flatnonzero(flags)


def relabel(records) -> list:
    """``records`` with labels renumbered densely by sorted identity."""
    labels = {k: i for i, k in enumerate(sorted({r.identity for r in records}))}
    return [dataclasses.replace(r, label=labels[r.identity]) for r in records]


def hold_out(source: ImageSource, fraction: float, seed: int) -> tuple:
    """(kept, held out) sources split by :func:`holdout_indices`."""
    keep, held = holdout_indices(source.records, fraction, seed)

    def subset(name, order):
        return ImageSource(name, relabel([source.records[i] for i in order]),
                           lambda i: source.read(order[i]))

    return (subset(source.name, keep),
            subset(f"{source.name} (held-out {len(held)} images)", held))


def _raw_split(config, split: str, workdir: str):
    """(name, records, read) of ``split`` ('train', 'val', 'eval') before finalize()."""
    source = config.data.source
    if source in ("folder", "synthetic"):
        root = data_dirs(config, workdir)[split]
        records = scan_folder(root, min_images_per_identity=1)
        extra = config.data.get("train_extra_dir", "") if split == "train" else ""
        if extra:
            records = with_extra_variants(records, scan_folder(extra, min_images_per_identity=1))
            root = f"{root} + {extra}"
        return root, records, _file_reader([r.path for r in records])
    if source == "mlfw_release":
        from bt_jax.data import release

        root = _manual_dir(config, required=True)
        records = release.release_split_records(root, "test" if split == "eval" else split)
        return f"{root} ({split})", records, _file_reader([r.path for r in records])
    if source == "tfds":
        return _tfds_split(config, split, workdir)
    raise ValueError(f"config.data.source={source!r} is unknown; use one of {SOURCES}.")


# Variant numbers of train_extra_dir's images start here, after any of train_dir's.
EXTRA_VARIANT_OFFSET = 10_000


def with_extra_variants(records: list, extra: list) -> list:
    """``records`` and ``extra``'s images of the same people as more variants of the same
    source photos (variant + EXTRA_VARIANT_OFFSET): the source-aware sampler then never
    pairs an image with its own re-aligned twin. Identities only in ``extra`` are left out."""
    people = {r.identity for r in records}
    extra = [dataclasses.replace(r, variant=r.variant + EXTRA_VARIANT_OFFSET)
             for r in extra if r.identity in people]
    if not extra:
        raise ValueError("config.data.train_extra_dir holds none of train_dir's identities; "
                         "give it the same <identity> folders (scripts/align.py --crops).")
    return sorted(records + extra, key=lambda r: (r.identity, r.source, r.variant, r.path))


def _manual_dir(config, *, required: bool) -> str:
    """config.data.manual_dir, or the parent of train_dir (which holds train/ and val/)."""
    if config.data.manual_dir:
        return config.data.manual_dir
    if required:
        raise ValueError(f"config.data.source={config.data.source!r} needs "
                         "config.data.manual_dir: the folder holding aligned/ and pairs.txt.")
    return os.path.dirname(os.path.normpath(config.data.train_dir))


def _tfds_split(config, split: str, workdir: str):
    from bt_jax.data import tfds_mlfw

    data_dir = config.data.tfds_dir or os.path.join(workdir, "tfds")
    builder = tfds_mlfw.prepare(data_dir, _manual_dir(config, required=False))
    if split == "eval":
        split = "test" if "test" in builder.info.splits else "val"
    records, read = tfds_mlfw.read_split(builder, split)
    return f"tfds mlfw/{split} in {data_dir}", records, read


def open_split(config, split: str, workdir: str) -> ImageSource:
    """The finalized ``ImageSource`` of ``split`` ('train', 'val' or 'eval')."""
    name, records, read = _raw_split(config, split, workdir)
    excluded = read_exclusions(config.data.exclude_file) if config.data.exclude_file else set()
    return finalize(name, records, read, excluded=excluded,
                    min_images=config.data.min_images_per_identity)


def preload(source: ImageSource, image_size: int, *, progress: bool = True,
            threads: int | None = None) -> tuple[list, np.ndarray]:
    """(records, uint8 images) of every readable image of ``source``.

    Unreadable images are left out with one warning naming the first few, so a
    bad file costs one image, not the run.
    """
    from tqdm.auto import tqdm

    names = [r.path for r in source.records]
    decode = SkippingDecoder(source.read, names, image_size)
    n = len(names)
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    ok = np.zeros(n, bool)
    desc = f"loading {os.path.basename(source.name)}"
    with concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        for i, pixels in enumerate(tqdm(pool.map(decode.try_decode, range(n)), total=n,
                                        unit="img", desc=desc, disable=not progress)):
            if pixels is not None:
                out[i], ok[i] = pixels, True
    if ok.all():
        return list(source.records), out
    # The decoder's message already names the file and says why (zero bytes,
    # truncated, a decompression bomb, not an image).
    bad = [decode.skipped[names[i]] for i in np.flatnonzero(~ok)]
    warnings.warn(f"{source.name}: skipped {len(bad)} unreadable images: {'; '.join(bad[:3])}"
                  f"{'; ...' if len(bad) > 3 else ''}", stacklevel=2)
    keep = np.flatnonzero(ok)
    return [source.records[i] for i in keep], out[keep]


def folder_records(folder: str, image_size: int, exclude_file: str = "") -> list:
    """Every usable image of ``folder`` for evaluation: the exclusion list applied, and
    unreadable images left out with a warning that says why (as in training)."""
    records = scan_folder(folder, min_images_per_identity=1)
    if exclude_file:
        records = [records[i] for i in kept_indices(records, read_exclusions(exclude_file))]
    if not records:
        raise ValueError(f"{folder}: no image is left after the exclusion list {exclude_file}.")
    source = ImageSource(folder, records, _file_reader([r.path for r in records]))
    return preload(source, image_size, progress=False)[0]


def train_pairs(config, source: ImageSource,
                transform: Callable[[np.ndarray], np.ndarray] | None = None):
    """Training pairs of ``source`` for ``config.data.loader``: 'stream' decodes each batch
    in grain worker threads, 'preload' decodes everything once into memory.

    ``transform`` maps the uint8 images of the whole split to what the pairs hold (a
    frozen trunk's activations); it needs every image at once, so with a transform the
    split is preloaded whatever the loader.
    """
    data, size = config.data, config.data.image_size
    if data.loader not in ("stream", "preload"):
        raise ValueError(f"config.data.loader={data.loader!r} is unknown; use 'stream' or "
                         "'preload'.")
    if data.loader == "stream" and transform is None:
        from bt_jax.data.pipeline import StreamingPairs   # grain: only when streaming

        return StreamingPairs(source, size, seed=config.seed, pair_sampler=data.pair_sampler,
                              workers=data.workers, prefetch=data.prefetch,
                              progress=config.train.progress)
    records, images = preload(source, size, progress=config.train.progress)
    inputs = images if transform is None else transform(images)
    del images  # with a transform, only its output stays in memory
    return PairDataset(records, inputs, seed=config.seed, pair_sampler=data.pair_sampler)
