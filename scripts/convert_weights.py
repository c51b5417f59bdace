"""Convert VGGFace2 (or earlier Barlow Twins) PyTorch weights for bt_jax training.

  python scripts/convert_weights.py --source resnet50_ft_weight.pkl \\
      --out converted_weights/vggface2_resnet50_ft
  python scripts/convert_weights.py --source checkpoint.pth --out converted_weights/bt_mlfw

Training picks the result up with --config.init=<the --out folder>. Unpickling can run code
stored in the file: convert only files you trust (.pth files load with weights_only=True).
"""

import sys
import time

from absl import app, flags, logging

from bt_jax import convert

_SOURCE = flags.DEFINE_string("source", None, "VGGFace2 release *.pkl or Barlow Twins *.pth.")
_OUT = flags.DEFINE_string("out", None, "Output folder, e.g. converted_weights/<name>.")
_ARCH = flags.DEFINE_enum("arch", "resnet50", sorted(convert.ARCHS), "Target backbone.")
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
        f"  parts: {', '.join(converted['parts'])}; {converted['params']:,} parameters, "
        f"{converted['arrays']['params']} param and {converted['arrays']['batch_stats']} "
        "batch-stat arrays",
        f"  dropped: {', '.join(manifest['dropped']) or 'nothing'}; ignored "
        f"{manifest['ignored_num_batches_tracked']} num_batches_tracked entries",
        f"  train with: --config.init={out} "
        f"--config.data.normalization={manifest['normalization']}",
    ]
    if arch["projector"]:
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
