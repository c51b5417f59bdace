"""Memory of one training step, per device and for all simulated devices, as XLA compiles it.

  python scripts/benchmark_memory.py --config configs/mlfw_facenet.py \
      --splits=Mixed_7a,block17_5,Mixed_6a --batches=256,128 --remat=false,true

Each setting compiles the train step for abstract inputs (no weights, data or steps) and
prints the bytes XLA's buffer assignment gives its arguments, outputs and temporaries
(bt_jax/benchmark/memory.py). A JSON line per setting goes to --json when given.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu

set_up_cpu(8)  # as scripts/train.py runs: before jax is imported

import json  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_SPLITS = flags.DEFINE_list("splits", ["Mixed_7a", "Mixed_6a"],
                            "config.model.freeze_until values to compile.")
_BATCHES = flags.DEFINE_list("batches", ["256"], "Global batch sizes (pairs).")
_REMAT = flags.DEFINE_list("remat", ["false", "true"], "config.model.remat values.")
_JSON = flags.DEFINE_string("json", "", "Append one JSON line per setting to this file.")
define_set_up_flags()
flags.mark_flag_as_required("config")


def main(argv) -> None:
    del argv
    from bt_jax.benchmark import memory

    try:
        remats = [memory.parse_bool("--remat", v) for v in _REMAT.value]
        batches = [memory.parse_batch(b) for b in _BATCHES.value]
        for row in memory.sweep(_CONFIG.value, _SPLITS.value, batches, remats):
            print(memory.format_row(row), flush=True)
            if _JSON.value:
                with open(_JSON.value, "a") as f:
                    f.write(json.dumps(row) + "\n")
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
