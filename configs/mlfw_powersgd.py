"""The earlier work's MLFW setting with PowerSGD rank 4 in place of the exact all-reduce.

  python scripts/train.py --config configs/mlfw_powersgd.py --workdir runs/mlfw_powersgd

Rank 4 sends about 165x fewer gradient floats per step than the exact all-reduce for
ResNet-50 at 244 px with the 2048-4096-8192 projector (docs/powersgd.md).
"""

from bt_jax.config import base_config


def get_config():
    config = base_config()
    config.reducer.name = "powersgd"
    config.reducer.powersgd.rank = 4
    return config
