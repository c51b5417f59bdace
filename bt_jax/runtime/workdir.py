"""A run's workdir: the names of what it holds, in one place, and the check that it can be
written.

``<workdir>/checkpoints/<step>/`` the latest few training states (orbax, atomic),
``best/`` the one with the lowest validation loss, ``metrics.jsonl`` one JSON record per
log interval and evaluation (and the same scalars in TensorBoard's
``events.out.tfevents.*`` files, one per attempt), ``results.json`` the start and end
evaluations, and
``config.json`` the config the run was started with (checked on resume), and ``lock`` while
a process trains in it (``bt_jax.runtime.lock``).
"""

from __future__ import annotations

import os

CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CONFIG = "config.json"
LOCK = "lock"


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


def check_output_file(path: str, flag: str) -> str:
    """``path`` writable as a file, checked before any work: its folder is made if missing;
    an empty path, a folder, a path under a file or in a read-only folder is refused."""
    if not path:
        raise ValueError(f"{flag} is empty; name a file.")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; name a file inside it.")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {path!r} lies under a file, not a folder; name a file in a "
                         "folder.") from None
    except PermissionError:
        raise ValueError(f"{flag} {path!r}: cannot create the folder {parent} (permission "
                         "denied); choose another place.") from None
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r}: the folder {parent} is not writable; choose "
                         "another place.")
    return path
