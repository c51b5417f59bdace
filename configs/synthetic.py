"""The embedded demo: a tiny ResNet on generated masked faces, 8 simulated CPU devices.

  python scripts/train.py --config configs/synthetic.py --workdir runs/synthetic
"""

from bt_jax.config import base_config, mild_face_augment


def get_config():
    config = base_config()
    config.data.source = "synthetic"
    config.data.image_size = 64
    config.data.crop_size = 0  # the generator draws faces at image_size
    config.data.normalization = "mlfw"
    config.data.pair_sampler = "all_pairs"
    config.data.loader = "preload"  # 3,000 small images fit in memory; one progress bar
    config.model.arch = "tiny"
    config.model.pool_window = 1
    config.model.projector = "512-512"
    config.init = "scratch"
    config.optim.batch_size = 128
    config.optim.warmup_epochs = 2
    config.train.epochs = 20
    return mild_face_augment(config)
