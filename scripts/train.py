"""Train Barlow Twins and report 1-NN identification accuracy.

  python scripts/train.py --config configs/synthetic.py --workdir runs/synthetic
  python scripts/train.py --config configs/mlfw.py --workdir runs/mlfw --config.train.epochs=50

Runs resume from the latest checkpoint in --workdir. SIGTERM or SIGUSR1 finishes the
current step, saves a checkpoint and exits with status 75 (EX_TEMPFAIL): rerun to resume.
Bad input, divergence and checkpoint write failures exit with status 1 and one line.
"""

from bt_jax.devices import simulate_cpu_devices

simulate_cpu_devices(8)  # before jax is imported; only affects the CPU platform

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax.checkpointing import CheckpointWriteError  # noqa: E402
from bt_jax.train import (PREEMPTED_EXIT_CODE, Preempted, format_results,  # noqa: E402
                          train_and_evaluate)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (ValueError, FileNotFoundError, FloatingPointError, CheckpointWriteError) as e:
        # Expected bad input, divergence or a full disk: the message names the problem and
        # the fix, so a traceback would only hide it.
        sys.exit(f"error: {type(e).__name__}: {e}")
    print(format_results(results))


if __name__ == "__main__":
    app.run(main)
