"""Barlow Twins from scratch on the real MLFW subset, sized for 2 CPU cores in under an hour.

No VGGFace2 weights here: a quarter-width, one-block-per-stage ResNet ('small') at 64 px
(the 112 px images resized on loading: 2.5x more steps in the hour than at 112 px), 8
simulated devices, pairs that never join two variants of one photo, and LARS at 5x the
reference learning rates, which a run of a few thousand steps needs (docs/results.md).

  python scripts/train.py --config configs/mlfw_cpu.py --workdir runs/mlfw_cpu
  python scripts/evaluate.py --config configs/mlfw_cpu.py --workdir runs/mlfw_cpu \
      --data_dir ../shared/data/mlfw/val --out runs/mlfw_cpu/eval

Results, ablations and the commands behind them: docs/results.md.
"""

from bt_jax.config import base_config, mild_face_augment


def get_config():
    config = base_config()
    config.data.image_size = 64
    config.data.normalization = "mlfw"
    config.data.pair_sampler = "source_aware"
    config.data.loader = "preload"  # 9,243 images of 64 px are 114 MB: decoded once, not per epoch
    config.model.arch = "small"
    config.model.pool_window = 2  # the global pool at 64 px, as 7 is at 224 for ResNet-50
    config.model.projector = "512-512"
    config.init = "scratch"
    config.optim.batch_size = 128
    config.optim.lr_weights = 1.0
    config.optim.lr_biases = 0.024
    config.optim.warmup_epochs = 1
    # Longer runs scored lower on val (docs/results.md): 10 epochs, 320 steps, ~4 min.
    config.train.epochs = 10
    config.evals.knn.every_epochs = 2
    return mild_face_augment(config)
