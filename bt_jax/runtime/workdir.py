"""A run's workdir: the names of what it holds, in one place, and the check that it can be
written.

``<workdir>/checkpoints/<step>/`` the latest few training states (orbax, atomic),
``best/`` the one with the lowest validation loss, ``metrics.jsonl`` one JSON record per
log interval and evaluation, ``results.json`` the start and end evaluations, and
``config.json`` the config the run was started with (checked on resume).
"""

from __future__ import annotations

import os

CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CONFIG = "config.json"


def path(workdir: str, name: str) -> str:
    """``workdir/name`` for one of the names above."""
    return os.path.join(workdir, name)


def check_workdir(workdir: str, flag: str = "--workdir") -> str:
    """``workdir`` created if needed, or a clear error for an empty path or a file."""
    if not workdir:
        raise ValueError(f"{flag} is empty; name a folder for checkpoints and results.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {workdir!r} is a file or lies under a file; name a "
                         "folder.") from None
    return workdir
