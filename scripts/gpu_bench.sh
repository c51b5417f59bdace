#!/usr/bin/env bash
# The benchmark on one NVIDIA GPU in under 5 minutes: our Barlow Twins step in bfloat16
# at 244 px with a batch that fills an 80 GB card (256 pairs = 512 images; halved once
# if it does not fit), its MFU against a bf16 8192^3 matmul measured in the same run,
# then side by side with PyTorch bf16 autocast (channels_last, cuDNN benchmark) at half
# that batch. Writes ${OUT:-runs}/gpu_bench.json and gpu_bench.md.
#
#   bash scripts/gpu_bench.sh                  # from anywhere; extra args go to benchmark.py
#   bash scripts/gpu_bench.sh --sizes 224 --batches 256
#
# Imports on this path: jax (CUDA), flax, optax, orbax-checkpoint, absl-py, Pillow, tqdm,
# numpy, and torch for the PyTorch side. ml_collections is optional (bt_jax/benchmark/
# cases.py stands in for it); grain and tensorflow-datasets are never imported here.
#
# Feed the result to the 8-GPU model of a CPU run (replaces its assumed compute time):
#   python scripts/benchmark.py --sections powersgd --powersgd_devices 0 \
#       --gpu_result runs/gpu_bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and PyTorch share the card in the side-by-side job: allocate on demand instead of
# JAX's default 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import jax; assert jax.default_backend() == 'gpu', f'no GPU: {jax.devices()}'"
# Per-job timeouts keep the whole run under 5 minutes even if a compile is slow; a job
# that times out is reported as such in the JSON instead of losing the others.
timeout 295 python3 scripts/benchmark.py --platform gpu --sections throughput \
    --sizes 244 --batches 256 --rounds 10 --job_timeout_s 110 \
    --json "$out/gpu_bench.json" --md "$out/gpu_bench.md" "$@"
