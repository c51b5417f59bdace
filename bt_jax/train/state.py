"""The one pytree that holds everything needed to resume training."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    reducer_state: Any
    rng: jax.Array  # raw uint32 key; per step and device it is folded with step and axis index
