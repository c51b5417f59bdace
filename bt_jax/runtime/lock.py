"""One writer at a time: an exclusive lock on a run's workdir or a gallery file.

The lock is a small file beside what it guards (``<workdir>/lock``, ``<gallery>.lock``)
that names its holder: pid, host and since when. Its exclusivity comes from the kernel
(``flock``), which releases it when the holder dies, however it dies; the file's text is
only there to tell the refused process who holds it. So on one host a lock file left by
a process that is no longer running is simply taken over, with a warning. A lock file
written on another host is different: a shared filesystem may not carry flock between
hosts, so its holder may well be alive; it is reported and left alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from typing import Any, Dict, Optional


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _holder_text() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "since_unix": time.time()}


def _read(fd: int) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
        holder = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def describe(holder: Dict[str, Any]) -> str:
    if not holder or "pid" not in holder:
        return "a process that wrote no name"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since "
            f"{holder.get('since')}")


class FileLock:
    """``with FileLock(path, what):`` holds ``path`` exclusively or raises LockedError."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self._fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._fd = self._take(fd)
            except BaseException:
                os.close(fd)
                raise
        return self

    def _take(self, fd: int) -> Optional[int]:
        """``fd`` once it holds the lock on the file now at ``self.path``; None to retry."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise LockedError(self._refusal(_read(fd))) from None
        # The holder we waited on may have removed the file on release: then this lock is
        # on a file nobody else can see, and we start again on the path.
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except FileNotFoundError:
            os.close(fd)
            return None
        self._check_previous(_read(fd))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_text()).encode())
        os.fsync(fd)
        return fd

    def _check_previous(self, holder: Dict[str, Any]) -> None:
        """A lock file that names a holder but is free: taken over if the holder was on
        this host (flock proves it is gone), refused if it was on another."""
        if not holder:
            return
        if holder.get("host") not in (None, socket.gethostname()):
            raise LockedError(self._refusal(holder) + " (another host: it may still be "
                              f"running; if it is not, delete {self.path})")
        warnings.warn(f"{self.what}: took over the lock {self.path} left by "
                      f"{describe(holder)}, which is no longer running.", stacklevel=3)

    def _refusal(self, holder: Dict[str, Any]) -> str:
        return (f"{self.what} is in use by {describe(holder)} (lock {self.path}); wait for "
                "it to finish or use another path")

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still held, so a process that opens the path next makes a new
        # file; one that opened the old file first sees it gone and retries (_take).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
