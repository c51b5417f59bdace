"""The exclusion list: images that every source leaves out (``config.data.exclude_file``).

One image a line, ``<identity>/<file name><TAB><reason>``; lines starting with ``#`` are
comments.
The key needs no split or root, so one list serves the folder, release and TFDS
sources alike (file names carry the identity, so keys are unique).
``scripts/clean_data.py`` writes it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

HEADER = ("# bt_jax exclusion list (scripts/clean_data.py): <identity>/<file><TAB><reason>\n"
          "# Sources leave these images out when config.data.exclude_file points here.\n")


def record_key(record) -> str:
    """``'<identity>/<file name>'`` of a record, whatever its source."""
    return f"{record.identity}/{os.path.basename(record.path)}"


def read_exclusions(path) -> set[str]:
    """Keys listed in ``path``; FileNotFoundError says how to make one."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"exclusion list {path} (config.data.exclude_file) does not "
                                "exist; write it with scripts/clean_data.py or set "
                                "--config.data.exclude_file=''.")
    keys = set()
    for line in path.read_text().splitlines():
        key = line.split("\t", 1)[0].strip()
        if key and not key.startswith("#"):
            keys.add(key)
    return keys


def write_exclusions(path, entries: Iterable[tuple[str, str]]) -> int:
    """Write (key, reason) entries sorted by key; returns how many were written."""
    entries = sorted(set(entries))
    lines = [f"{key}\t{reason}\n" for key, reason in entries]
    pathlib.Path(path).write_text(HEADER + "".join(lines))
    return len(entries)


def kept_indices(records: Sequence, excluded: set[str]) -> list[int]:
    """Positions of the ``records`` not on the list, in order.

    Positions rather than records: a source reads images by position, so callers
    that keep a reader need them (the others index ``records`` with them).
    """
    return [i for i, r in enumerate(records) if record_key(r) not in excluded]
