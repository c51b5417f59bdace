"""Export a network's embedding function with its weights: a jax.export artifact, or ONNX.

  # a training run's latest checkpoint
  python scripts/export.py --config configs/mlfw.py --workdir runs/mlfw --out exports/mlfw
  # converted weights (or 'scratch'), replacing an earlier export
  python scripts/export.py --config configs/facenet.py --init converted_weights/x \
      --out exports/facenet --overwrite
  # an ONNX graph for onnxruntime (docs/onnx.md)
  python scripts/export.py --config configs/mlfw_facenet.py --workdir runs/mlfw_facenet \
      --format onnx --out exports/mlfw_onnx

Writes <out>/embedder.bin (the function, weights inside) and <out>/embedder.json (image
size, normalisation, embedding, metric, feature_dim, fingerprint). Load it with
``bt_jax.identify.exported.load_embedder(out)``, which needs only jax and numpy. Its inputs are
aligned face crops, uint8 RGB of config.data.image_size px, prepared like the training
images (scripts/align.py makes them from photos). Its outputs are float32 embeddings, not
L2-normalised. With --format onnx: <out>/embedder.onnx alone, the settings in its metadata,
taking raw crops at config.data.crop_size (the resize is inside the graph); loaded by the
same function, run by onnxruntime without jax.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(8)  # before jax is imported: a checkpoint restores as in evaluate.py
quiet()  # before jax is imported: no backend-probe INFO lines

import copy  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (model, "
                                          "image size, normalisation, config.eval.embedding "
                                          "and metric).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run whose latest checkpoint to "
                               "export.")
_INIT = flags.DEFINE_string("init", None, "Converted-weights folder, or 'scratch' for an "
                            "untrained network (seeded by config.seed). Default: config.init.")
_OUT = flags.DEFINE_string("out", None, "Folder for embedder.bin and embedder.json. The "
                           "exported function takes aligned face crops (uint8, N x S x S x 3, "
                           "S = config.data.image_size; scripts/align.py aligns photos).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier export in --out.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms the artifact runs on: "
                               "cpu, cuda, rocm, tpu (--format jax).")
_FORMAT = flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax: embedder.bin (jax.export) "
                            "and embedder.json; onnx: embedder.onnx for onnxruntime.")
flags.mark_flags_as_required(["config", "out"])


def _check_args(config) -> None:
    """Arguments that cannot work, found before any weights are read."""
    from bt_jax.identify import export

    export.check_out_dir(_OUT.value, _OVERWRITE.value)
    if _FORMAT.value == "onnx":
        from bt_jax.identify import onnx_export

        onnx_export.check_converter()
    else:
        export.check_platforms(_PLATFORMS.value)
    if _WORKDIR.value is not None:
        from bt_jax.runtime import run_config

        if not _WORKDIR.value:
            raise ValueError("--workdir is empty; name a training run's folder.")
        if _INIT.value is not None:
            raise ValueError("pass either --workdir (a training run) or --init (weights), "
                             "not both.")
        run_config.check(config, _WORKDIR.value, action="load")


def _export(config) -> dict:
    from bt_jax.identify import export, exported
    from bt_jax.network import embedder

    loaded = embedder.load_weights(config, workdir=_WORKDIR.value, init=_INIT.value)
    if _INIT.value is not None:
        config = copy.deepcopy(config)
        config.init = _INIT.value  # a frozen trunk reads its weights from config.init
    if _FORMAT.value == "onnx":
        from bt_jax.identify import onnx_export

        onnx_export.export_onnx(config, loaded.variables, _OUT.value,
                                overwrite=_OVERWRITE.value)
    else:
        export.export_embedder(config, loaded.variables, _OUT.value,
                               platforms=_PLATFORMS.value, overwrite=_OVERWRITE.value)
    return exported.load_embedder(_OUT.value).info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()
    start = time.time()
    try:
        _check_args(_CONFIG.value)
        info = _export(_CONFIG.value)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # Expected bad input: one line that names the problem and the fix.
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    size = sum(os.path.getsize(os.path.join(_OUT.value, f)) for f in os.listdir(_OUT.value))
    runs_on = (f"platforms {','.join(info['platforms'])}" if "platforms" in info else
               f"onnxruntime, {info['crop_size']} px crops resized to {info['image_size']} "
               "in the graph")
    print(f"exported {info['arch']} {info['embedding']} to {os.path.abspath(_OUT.value)}: "
          f"{info['image_size']} px crops -> {info['feature_dim']} floats ({info['metric']}), "
          f"{runs_on}")
    print(f"  fingerprint {info['fingerprint']}, {size / 1e6:.1f} MB, "
          f"{time.time() - start:.1f} s")


if __name__ == "__main__":
    app.run(main)
