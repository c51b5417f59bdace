"""Stopping on a signal: SIGTERM/SIGUSR1 (a scheduler's preemption) and SIGINT (Ctrl-C)
become a flag that the training loop reads between steps, and the exit status a requeue
wrapper acts on. The loop saves a checkpoint and raises ``Preempted``; the entry point
exits with its ``exit_code``.
"""

from __future__ import annotations

import signal
import threading

from tqdm.auto import tqdm

from bt_jax.runtime import distributed

# Exit status after a SIGTERM/SIGUSR1 stop with a saved checkpoint: EX_TEMPFAIL, "try
# again". Requeue scripts rerun the same command, which resumes from that checkpoint.
PREEMPTED_EXIT_CODE = 75
# After Ctrl-C (SIGINT): 128 + 2, as shells report it. Not 75: a person who pressed
# Ctrl-C wants to stop, and requeue wrappers would run 75 again.
INTERRUPTED_EXIT_CODE = 130


def _exit_code(signum: int) -> int:
    return INTERRUPTED_EXIT_CODE if signum == signal.SIGINT else PREEMPTED_EXIT_CODE


class Preempted(Exception):
    """Training stopped on a signal (after saving a checkpoint, once steps have run)."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Turns SIGTERM/SIGUSR1/SIGINT into a flag that the loop reads between steps.

    Before the loop starts there is nothing to save, so a signal stops at once. In the
    loop the first signal finishes the step and saves; a second Ctrl-C aborts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __enter__(self):
        self.requested, self.looping, self._previous = None, False, {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @staticmethod
    def _start_up_stop(signum) -> Preempted:
        return Preempted(f"stopped by signal {signum} during start-up, before any training "
                         "step; nothing to save. Run the same command to start again.",
                         _exit_code(signum))

    def _handle(self, signum, frame):
        del frame
        if not self.looping:
            # Raised from a handler, the exception lands wherever Python was; inside a gc
            # callback or __del__ it is printed and dropped, so start_loop checks again.
            self.requested = signum
            raise self._start_up_stop(signum)
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.requested is None:
            self.requested = signum
            again = " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""
            tqdm.write(f"received signal {signum}: finishing this step, then saving{again}")

    def start_loop(self) -> None:
        """Enter the training loop, unless a signal already asked to stop during start-up."""
        if self.requested is not None:
            raise self._start_up_stop(self.requested)
        self.looping = True

    def should_stop(self) -> bool:
        # Every process must stop at the same step, or the others hang in a collective.
        return distributed.any_process(self.requested is not None)

    def exit_code(self) -> int:
        return _exit_code(self.requested if self.requested is not None else signal.SIGTERM)
