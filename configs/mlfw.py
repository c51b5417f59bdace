"""The earlier work's setting: ResNet-50 from converted VGGFace2 weights on MLFW, 8 GPUs.

  python scripts/train.py --config configs/mlfw.py --workdir runs/mlfw
"""

from bt_jax.config import base_config


def get_config():
    return base_config()
