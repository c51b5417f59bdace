"""Convert VGGFace2 / earlier Barlow Twins PyTorch weights, or a FaceNet frozen graph, for
bt_jax training. The kind of source is detected from the file.

  python scripts/convert_weights.py --source resnet50_ft_weight.pkl \\
      --out converted_weights/vggface2_resnet50_ft
  python scripts/convert_weights.py --source checkpoint.pth --out converted_weights/bt_mlfw
  python scripts/download_facenet.py   # prints the path of the cached graph_final.pb
  python scripts/convert_weights.py --source <that path> --out converted_weights/facenet_casia

Training picks the result up with --config.init=<the --out folder>. Unpickling can run code
stored in the file: convert only files you trust (.pth files load with weights_only=True).
"""

from bt_jax.runtime.logs import quiet

quiet()  # before jax is imported: no backend-probe INFO lines

import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from bt_jax.weights import convert  # noqa: E402
from bt_jax.models.backbones import ARCHS  # noqa: E402

_SOURCE = flags.DEFINE_string("source", None, "VGGFace2 release *.pkl, Barlow Twins *.pth, "
                              "or FaceNet frozen graph *.pb.")
_OUT = flags.DEFINE_string("out", None, "Output folder, e.g. converted_weights/<name>.")
_ARCH = flags.DEFINE_enum("arch", None, sorted(ARCHS), "Target backbone; default: "
                          "resnet50 for .pkl/.pth, inception_resnet_v1 for a FaceNet .pb.")
_KEEP_FC = flags.DEFINE_bool("keep_fc", False, "Keep the classifier (for resnet50(num_classes=)).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.")
_NORMALIZATION = flags.DEFINE_string(
    "normalization", None, "Preprocessing preset to record; default: what the source used.")
flags.mark_flags_as_required(["source", "out"])


def summary(manifest, out: str, seconds: float) -> str:
    arch, converted = manifest["architecture"], manifest["converted"]
    lines = [
        f"converted {manifest['source']['file']} (sha256 {manifest['source']['sha256'][:16]}...) "
        f"in {seconds:.1f} s -> {out}",
        f"  parts: {', '.join(converted['parts'])} ({arch['arch']}); {converted['params']:,} "
        f"parameters, {converted['arrays']['params']} param and "
        f"{converted['arrays']['batch_stats']} batch-stat arrays",
    ]
    if "graph" in manifest:
        graph = manifest["graph"]
        derived = "; ".join(f"{k} ({v} arrays)" for k, v in graph["derived"].items())
        lines.append(f"  graph: {graph['graph_nodes']} nodes, {graph['constants']} constants: "
                     f"{graph['constants_converted']} converted, {graph['constants_checked']} "
                     f"structural ones checked; BatchNorm layers "
                     f"{', '.join(f'{v} {k}' for k, v in graph['batchnorm'].items())}"
                     + (f"; derived: {derived}" if derived else ""))
    else:
        lines.append(f"  dropped: {', '.join(manifest['dropped']) or 'nothing'}; ignored "
                     f"{manifest['ignored_num_batches_tracked']} num_batches_tracked entries")
    lines.append(f"  train with: --config.init={out} --config.model.arch={arch['arch']} "
                 f"--config.data.normalization={manifest['normalization']}")
    if arch.get("projector"):
        lines.append(f"  projector: --config.model.projector={arch['projector']} (it expects "
                     f"{arch['projector_in_features']} backbone features)")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every step of a save at INFO
    start = time.perf_counter()
    try:
        manifest = convert.convert_file(
            _SOURCE.value, _OUT.value, arch=_ARCH.value, keep_fc=_KEEP_FC.value,
            overwrite=_OVERWRITE.value, normalization=_NORMALIZATION.value)
    except (ValueError, OSError) as e:  # expected bad input: the message says what to do
        sys.exit(f"error: {e}")
    print(summary(manifest, _OUT.value, time.perf_counter() - start))


if __name__ == "__main__":
    app.run(main)
