"""Atomic checkpoints with orbax: the latest few for resuming, and the best by val loss."""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; earlier checkpoints are untouched."""


class Checkpointer:
    """``latest/`` keeps the most recent checkpoints; ``best/`` the lowest val_loss."""

    def __init__(self, workdir: str, keep: int = 2):
        root = self.root = os.path.abspath(workdir)
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min"))

    def save(self, step: int, state: Any, val_loss: Optional[float] = None) -> None:
        """Save host ``state``; with ``val_loss`` it also competes for ``best/``.

        Waits for the write so that a failure (a full disk) surfaces here, naming the
        step; orbax writes into a temporary folder and renames it, so the checkpoints
        already on disk stay intact and restorable.
        """
        try:
            if self.latest.latest_step() != step:
                self.latest.save(step, args=ocp.args.StandardSave(state))
                self.latest.wait_until_finished()
            if val_loss is not None:
                self.best.save(step, args=ocp.args.StandardSave(state),
                               metrics={"val_loss": float(val_loss)})
                self.best.wait_until_finished()
        except OSError as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} under {self.root}: {e}. The "
                f"earlier checkpoint (step {self.latest.latest_step()}) is intact; free disk "
                "space or point --workdir elsewhere, then rerun to resume.") from e

    def restore_latest(self, template: Any) -> Optional[Any]:
        """The latest checkpoint restored into ``template``'s structure, or None."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return self.latest.restore(step, args=ocp.args.StandardRestore(template))

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
