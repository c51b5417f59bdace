"""The official MLFW release layout: a flat ``aligned/`` folder and ``pairs.txt``.

::

    root/aligned/Aaron_Peirsol_0001_0000.jpg     # <Name>_SSSS_VVVV.jpg, as in the folder layout
    root/pairs.txt                               # "<file_a> <file_b> <1 same | 0 different>"

The identity is parsed from the file name (``Name``). ``pairs.txt`` holds the
verification protocol: 6000 lines in 10 folds of 600, each fold with its own
identities (CALFW keeps LFW's folds). Splits follow the folds, so that they are
identity-disjoint: an identity belongs to the fold where it first appears
(identities missing from ``pairs.txt`` get a fold from a stable hash of their
name); fold 9 is ``val``, fold 10 is ``test`` and folds 1-8 are ``train``.
"""

from __future__ import annotations

import os
import pathlib
import zlib

from bt_jax.data.folder import IMAGE_SUFFIXES, ImageRecord, parse_image_name

ALIGNED, PAIRS = "aligned", "pairs.txt"
NUM_FOLDS = 10
SPLIT_FOLDS = {"train": tuple(range(8)), "val": (8,), "test": (9,)}
LAYOUT_HINT = (f"The MLFW release layout is <root>/{ALIGNED}/<Name>_SSSS_VVVV.jpg (one flat "
               f"folder) plus <root>/{PAIRS} ('<file_a> <file_b> <0|1>' per line); point "
               "config.data.manual_dir at <root>, or use config.data.source='folder' for a "
               "<split>/<identity>/<file> tree.")


def read_pairs_file(path) -> list[tuple[str, str, int]]:
    """(file_a, file_b, same) per line of ``pairs.txt``; blank lines are skipped."""
    pairs = []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3 or fields[-1] not in ("0", "1"):
            raise ValueError(f"{path} line {number}: {line!r} is not '<file_a> <file_b> <0|1>'. "
                             f"{LAYOUT_HINT}")
        pairs.append((os.path.basename(fields[0]), os.path.basename(fields[1]),
                      int(fields[-1])))
    return pairs


def identity_folds(pairs: list[tuple[str, str, int]], names, num_folds: int = NUM_FOLDS):
    """{identity: fold} for every name in ``names``: first fold in ``pairs``, else a hash."""
    folds = {}
    for line, (file_a, file_b, _) in enumerate(pairs):
        fold = line * num_folds // max(len(pairs), 1)
        for file in (file_a, file_b):
            folds.setdefault(parse_image_name(file)[0], fold)
    # crc32, not hash(): Python salts str hashes per process.
    return {name: folds.get(name, zlib.crc32(name.encode()) % num_folds) for name in names}


def _check_release(root: pathlib.Path) -> None:
    for path in (root / ALIGNED, root / PAIRS):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist. {LAYOUT_HINT}")


def release_split_records(root, split: str) -> list[ImageRecord]:
    """Records of the images of ``split`` ('train', 'val' or 'test'), labels dense from 0.

    Raises FileNotFoundError naming the missing path, ValueError on a bad split
    name, a malformed image name or a malformed ``pairs.txt``.
    """
    if split not in SPLIT_FOLDS:
        raise ValueError(f"release split {split!r} is unknown; use one of {sorted(SPLIT_FOLDS)}.")
    root = pathlib.Path(root).expanduser().resolve()
    _check_release(root)
    with os.scandir(root / ALIGNED) as entries:
        files = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root / ALIGNED} holds no images. {LAYOUT_HINT}")
    parsed = {file: parse_image_name(file) for file in files}
    folds = identity_folds(read_pairs_file(root / PAIRS), {p[0] for p in parsed.values()})
    wanted = sorted(name for name, fold in folds.items() if fold in SPLIT_FOLDS[split])
    labels = {name: label for label, name in enumerate(wanted)}
    records = [ImageRecord(str(root / ALIGNED / file), name, labels[name], source, variant, None)
               for file, (name, source, variant) in parsed.items() if name in labels]
    records.sort(key=lambda r: (r.label, r.source, r.variant, r.path))
    return records
