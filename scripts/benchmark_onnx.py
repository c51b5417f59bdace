"""The ONNX embedder against the JAX ones: parity on real val faces and embeddings per second.

  # FaceNet whole at 160 px (parity and speed, the table in docs/benchmarks.md)
  python scripts/benchmark_onnx.py --init converted_weights/facenet_casia
  # a fine-tuned frozen-trunk run; parity only
  python scripts/benchmark_onnx.py --config configs/mlfw_facenet.py \
      --workdir runs/mlfw_facenet --batches=
  # the ResNet-50 (converted weights, or 'scratch' for a seeded initialisation)
  python scripts/benchmark_onnx.py --config configs/mlfw.py --init scratch --batches=

Exports the network both ways into a temporary folder, then prints one JSON line: the CPU,
max |onnx - jax| / max |jax| over --count val crops, and embeddings per second at each of
--batches for onnxruntime, the jax.export artifact and the jitted JAX function, with their
ratios to the jitted function (bt_jax/benchmark/serving.py).
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(8)  # first: tcmalloc (a re-exec), simulated CPU devices, the fast CPU path
quiet()

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "facenet.py"),
                                          "The embedder's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run whose latest checkpoint to use.")
_INIT = flags.DEFINE_string("init", None, "Converted weights, or 'scratch' (seeded by "
                            "config.seed). Default: config.init.")
_DATA = flags.DEFINE_string("data_dir", os.path.join(REPO, "..", "shared", "data", "mlfw",
                                                     "val"), "Aligned <identity>/<image> crops.")
_COUNT = flags.DEFINE_integer("count", 64, "Val crops compared (a seeded draw).")
_BATCHES = flags.DEFINE_list("batches", ["1", "64"], "Batch sizes timed; empty: parity only.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed calls per batch size (the median counts).")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON line to this file.")


def _run(config) -> dict:
    from bt_jax.benchmark import serving
    from bt_jax.network import embedder
    from bt_jax.runtime import run_config

    if _WORKDIR.value:
        run_config.check(config, _WORKDIR.value, action="load")
    loaded = embedder.load_weights(config, workdir=_WORKDIR.value, init=_INIT.value)
    if _INIT.value is not None:
        config = copy.deepcopy(config)
        config.init = _INIT.value  # a frozen trunk reads its weights from config.init
    files = serving.val_files(_DATA.value, _COUNT.value)
    return serving.measure(config, loaded.variables, files,
                           batches=[int(b) for b in _BATCHES.value], rounds=_ROUNDS.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()
    try:
        result = _run(_CONFIG.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    result["weights"] = _WORKDIR.value or _INIT.value or _CONFIG.value.init
    line = json.dumps(result)
    print(line)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
