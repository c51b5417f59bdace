"""The benchmarked configuration: configs/mlfw.py (or another recipe in configs/) with the
sizes of one case.

The GPU machines have jax, flax and optax but not always ml_collections. The config's
field defaults must stay in one place (``bt_jax/config.py``), so where ml_collections is
missing a small attribute-dict stands in for ``config_dict`` instead of a copy of them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
from dataclasses import asdict, dataclass


class _Fields(dict):
    """The part of ``ConfigDict`` that ``base_config`` and the train step use."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, _Fields) else v for k, v in self.items()}


def _config_dict_stand_in() -> None:
    module = types.ModuleType("ml_collections")
    module.config_dict = types.SimpleNamespace(ConfigDict=_Fields, placeholder=lambda kind: None)
    sys.modules["ml_collections"] = module


def _ensure_config_dict() -> None:
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        _config_dict_stand_in()


def base_config():
    """``bt_jax.config.base_config()``, with the stand-in where ml_collections is missing."""
    _ensure_config_dict()
    from bt_jax.config import base_config as real
    return real()


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def recipe_config(recipe: str = ""):
    """``configs/<recipe>.py``'s config ('' : the base config, i.e. configs/mlfw.py), loaded
    by path as config_flags would, so that the benchmark times the recipe as it is."""
    if not recipe:
        return base_config()
    _ensure_config_dict()
    path = os.path.join(CONFIG_DIR, f"{recipe}.py")
    spec = importlib.util.spec_from_file_location(f"bt_jax_bench_configs_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def full_pool_window(image_size: int) -> int:
    """The average-pool window that leaves a 2x2 map, i.e. 8192 features as at 244 px.

    With it every size has exactly the parameters of the earlier work's model, so the
    projector, the loss and LARS cost the same and only the convolutions scale.
    """
    from bt_jax.models.resnet import resnet50
    final = math.isqrt(resnet50(pool_window=1).feature_dim(image_size) // 2048)
    if final < 2:
        raise ValueError(f"image_size={image_size} leaves a {final}x{final} map; use >= 64")
    return final - 1


@dataclass(frozen=True)
class Case:
    """One benchmarked step: model sizes, global batch (pairs) and devices."""

    image_size: int = 244
    batch: int = 8
    projector: str = "2048-4096-8192"
    arch: str = "resnet50"
    pool_window: int = 0  # 0: full_pool_window(image_size)
    dtype: str = "float32"
    num_devices: int = 1
    reducer: str = "exact"
    rank: int = 4
    # A file in configs/ whose other settings (optimizer, normalisation, BatchNorm mode, a
    # frozen trunk) the step takes; '' is the base config, configs/mlfw.py.
    recipe: str = ""

    def with_(self, **changes) -> "Case":
        return Case(**{**asdict(self), **changes})

    def config(self):
        """The recipe from scratch with this case's fields; PowerSGD from step 0."""
        config = recipe_config(self.recipe)
        # Random weights: a frozen trunk's are never read (its activations are inputs
        # here), and the timing does not depend on the values.
        config.init = "scratch"
        config.num_devices = self.num_devices
        config.data.image_size = self.image_size
        config.model.arch = self.arch
        config.model.projector = self.projector
        config.model.pool_window = self.pool_window or (
            full_pool_window(self.image_size) if self.arch == "resnet50" else 1)
        config.model.dtype = self.dtype
        config.optim.batch_size = self.batch
        config.optim.warmup_epochs = 1
        config.train.epochs = 2
        config.reducer.name = self.reducer
        config.reducer.powersgd.rank = self.rank
        config.reducer.powersgd.start_iter = 0  # time the compressed step, not the exact one
        return config
