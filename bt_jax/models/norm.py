"""The BatchNorm every model builds its layers with."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn


def batch_norm(*, train: bool, momentum: float, epsilon: float, dtype: Any,
               axis_name: Optional[str] = None, frozen: bool = False) -> Callable[..., nn.Module]:
    """``nn.BatchNorm`` with a model's settings, called with only a ``name`` per layer.

    Training uses batch statistics, averaged over ``axis_name`` when set (SyncBatchNorm
    inside pmap/shard_map); evaluation, and training with ``frozen``, the running ones.
    Outside training no device axis is named, so the model also runs outside pmap.
    """
    return functools.partial(
        nn.BatchNorm, use_running_average=not train or frozen, momentum=momentum,
        epsilon=epsilon, dtype=dtype, axis_name=axis_name if train else None)
