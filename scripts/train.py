"""Train Barlow Twins and report 1-NN identification accuracy.

  python scripts/train.py --config configs/synthetic.py --workdir runs/synthetic
  python scripts/train.py --config configs/mlfw.py --workdir runs/mlfw --config.train.epochs=50

Runs resume from the latest checkpoint in --workdir. SIGTERM or SIGUSR1 finishes the
current step, saves a checkpoint and exits with status 75 (EX_TEMPFAIL): rerun to resume.
Ctrl-C does the same with status 130 (a second Ctrl-C aborts at once). Bad input,
divergence and checkpoint write failures exit with status 1 and one line.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(8)  # first: tcmalloc (a re-exec), 8 simulated CPU devices, the fast CPU path
quiet()  # before jax is imported: no backend-probe or font-cache INFO lines

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax.runtime.checkpointing import CheckpointWriteError  # noqa: E402
from bt_jax.runtime.lock import LockedError  # noqa: E402
from bt_jax.runtime.preemption import INTERRUPTED_EXIT_CODE, Preempted  # noqa: E402
from bt_jax.train.loop import format_results, train_and_evaluate  # noqa: E402

define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()  # orbax logs every save at INFO
    try:
        results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("aborted by a second Ctrl-C: steps since the last checkpoint are lost.",
              file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except CheckpointWriteError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        # orbax's writer threads report the same failure again while the interpreter
        # shuts down; the line above already says it all.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        sys.exit(1)
    except (ValueError, FileNotFoundError, FloatingPointError, LockedError) as e:
        # Expected bad input or divergence: the message names the problem and the fix,
        # so a traceback would only hide it.
        sys.exit(f"error: {type(e).__name__}: {e}")
    print(format_results(results))


if __name__ == "__main__":
    app.run(main)
