"""Atomic checkpoints with orbax: the latest few for resuming, and the best by val loss."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from bt_jax.runtime import workdir as workdir_files


@contextlib.contextmanager
def _held_stderr(keep: Callable[[], bool]):
    """Hold what is written to stderr (file descriptor 2: Python, C++ and worker threads
    alike) and write it out at the end only if ``keep()``. A failed orbax write logs one
    traceback per writer thread, hundreds of lines for one full disk; the same error
    reaches the caller, which reports it once with what is kept on disk."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if keep():
                held.seek(0)
                os.write(2, held.read())


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; earlier checkpoints are untouched."""


class Checkpointer:
    """``latest/`` keeps the most recent checkpoints; ``best/`` the lowest val_loss."""

    def __init__(self, workdir: str, keep: int = 2):
        root = self.root = os.path.abspath(workdir)
        self.keep = keep
        self.latest = self._open_latest()
        self.best = ocp.CheckpointManager(
            os.path.join(root, workdir_files.BEST),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min"))
        self.failed = self.closed = False

    def save(self, step: int, state: Any, val_loss: Optional[float] = None) -> None:
        """Save host ``state``; with ``val_loss`` it also competes for ``best/``.

        Waits for the write so that a failure (a full disk) surfaces here, naming the
        step; orbax writes into a temporary folder and renames it, so the checkpoints
        already on disk stay intact and restorable.
        """
        try:
            with _held_stderr(keep=lambda: not self.failed) as held:
                try:
                    self._save(step, state, val_loss)
                except Exception:
                    self.failed = True
                    # orbax's writer threads report the failure again as they stop, for a
                    # while after the error: stop them now, while stderr is held.
                    self._stop_managers()
                    _until_quiet(held)
                    raise
        except Exception as e:  # orbax reports a full disk as ValueError, others as OSError
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} under {self.root}: "
                f"{_first_line(e)}. {self.kept()}; free disk space or point --workdir "
                "elsewhere, then rerun to resume.") from None

    def _open_latest(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            os.path.join(self.root, workdir_files.CHECKPOINTS),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True))

    def _save(self, step: int, state: Any, val_loss: Optional[float]) -> None:
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(state))
            self.latest.wait_until_finished()
        if val_loss is not None:
            self.best.save(step, args=ocp.args.StandardSave(state),
                           metrics={"val_loss": float(val_loss)})
            self.best.wait_until_finished()

    def kept(self) -> str:
        """What is on disk, for messages: the checkpoint a rerun would resume from."""
        step = self.latest.latest_step()
        if step is None:
            return "No checkpoint was written yet, so a rerun starts from step 0"
        return f"The checkpoint of step {step} is intact and a rerun resumes from it"

    @staticmethod
    def has_checkpoints(workdir: str) -> bool:
        folder = os.path.join(workdir, workdir_files.CHECKPOINTS)
        return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))

    def restore_latest(self, template: Any) -> Optional[Any]:
        """The newest checkpoint that restores into ``template``'s structure, or None.

        A step folder that cannot be read (truncated, empty) is renamed ``<step>.corrupt``
        with a warning, never deleted, and the next older one is tried: orbax will not
        save a step at or below the latest one it sees, so leaving a bad folder in place
        would lose the progress of every later run.
        """
        while True:
            step = self.latest.latest_step()
            if step is None:
                return None
            try:
                return self.latest.restore(step, args=ocp.args.StandardRestore(template))
            except Exception as e:  # what a damaged folder raises varies with the damage
                if _is_structure_mismatch(e):
                    raise
                self._set_aside(step, e)

    def _set_aside(self, step: int, error: Exception) -> None:
        folder = os.path.join(self.root, workdir_files.CHECKPOINTS, str(step))
        target = f"{folder}.corrupt"
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = f"{folder}.corrupt{suffix}"
        os.rename(folder, target)
        warnings.warn(f"checkpoint of step {step} cannot be read ({_first_line(error)[:200]}); "
                      f"moved it to {target} and trying the previous one.", stacklevel=3)
        # A manager that failed a restore keeps stale state: open a new one.
        self.latest.close()
        self.latest = self._open_latest()

    def close(self) -> None:
        # After a failed write orbax's threads report it again as they shut down.
        with _held_stderr(keep=lambda: not self.failed):
            self._stop_managers()

    def _stop_managers(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
        except Exception:
            if not self.failed:
                raise
        finally:
            self.latest.close()
            self.best.close()


def restore_variables(workdir: str, template: Any) -> tuple:
    """(params and batch_stats of the newest readable checkpoint of ``workdir``, its step).

    A partial restore: ``template`` ({'params', 'batch_stats'} shapes) names the only
    parts read, so optimizer moments and per-device reducer state stay on disk. Read-only:
    an unreadable step is skipped with a warning, not moved aside as resuming does.
    """
    folder = os.path.join(os.path.abspath(workdir), workdir_files.CHECKPOINTS)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), template)
    manager = ocp.CheckpointManager(folder)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = manager.restore(step, args=ocp.args.PyTreeRestore(
                    item=template, restore_args=restore_args, partial_restore=True))
                return restored, step
            except Exception as e:  # noqa: BLE001 (what a damaged folder raises varies)
                if _is_structure_mismatch(e):
                    raise
                warnings.warn(f"checkpoint of step {step} in {folder} cannot be read "
                              f"({_first_line(e)[:200]}); trying the previous one.",
                              stacklevel=2)
    finally:
        manager.close()
    return None, None


def _until_quiet(held, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Wait until nothing more is written to ``held`` for ``quiet_s`` (at most ``limit_s``).
    After a failed write tensorstore's native threads still finish the writes in flight
    and each reports into the save's closed event loop ('RuntimeError: Event loop is
    closed' tracebacks), for a while after orbax has raised."""
    size, quiet_since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit_s:
        now = os.fstat(held.fileno()).st_size
        if now != size:
            size, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    if "No space left on device" in text:  # orbax wraps ENOSPC in a long ValueError
        return f"{type(error).__name__}: No space left on device"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


def _is_structure_mismatch(error: Exception) -> bool:
    """A checkpoint that reads fine but into another model: the caller's config is wrong,
    not the folder, so it must not be set aside."""
    text = str(error)
    return ("does not match" in text or "Missing" in text or "Unexpected" in text
            or "shape" in text.lower() and "mismatch" in text.lower())
