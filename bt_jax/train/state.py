"""The one pytree that holds everything needed to resume training, how a fresh one is made,
and how it moves between the host (checkpoints) and the devices."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.network import embedding, trunk
from bt_jax.runtime import distributed, parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    reducer_state: Any
    rng: jax.Array  # raw uint32 key; per step and device it is folded with step and axis index


def initial_state(config, tx, reducer) -> TrainState:
    """A fresh host-side TrainState, from converted weights unless init is 'scratch'."""
    variables = embedding.initial_variables(config)
    params = variables["params"]
    return TrainState(step=np.zeros((), np.int32), params=params,
                      batch_stats=variables["batch_stats"],
                      opt_state=jax.tree.map(np.asarray, tx.init(params)),
                      reducer_state=_per_device(reducer.init(params), config.num_devices),
                      rng=np.asarray(jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)))


# Inputs that set the running statistics of config.model.bn_mode='recalibrate'.
RECALIBRATION_INPUTS = 1024


def recalibrated(config, state: TrainState, train_pairs) -> TrainState:
    """``state`` with the backbone's BatchNorm recalibrated on training inputs (a fixed
    seeded sample, so a resumed run recomputes the same values)."""
    inputs = getattr(train_pairs, "images", None)
    if inputs is None:
        raise ValueError("config.model.bn_mode='recalibrate' needs the training inputs in "
                         "memory: set config.data.loader='preload' or freeze a trunk.")
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.permutation(len(inputs))[:RECALIBRATION_INPUTS])
    x = embedding.network_input(jnp.asarray(inputs[pick]), config)
    params, batch_stats = trunk.recalibrate_batchnorm(
        config, embedding.create_model(config), state.params, state.batch_stats, x)
    return state.replace(params=params, batch_stats=batch_stats)


def _per_device(tree, num_devices: int):
    """Stack one host copy per device: reducer state may differ between devices."""
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_devices), tree)


def state_to_devices(state: TrainState, mesh) -> TrainState:
    """Host state -> device state: replicated, except the per-device reducer state."""
    on_devices = parallel.replicate(state.replace(reducer_state=()), mesh)
    return on_devices.replace(reducer_state=parallel.distribute(state.reducer_state, mesh))


def state_to_host(state: TrainState) -> TrainState:
    """Device state -> host state for checkpoints, keeping every device's reducer state
    (PowerSGD's error feedback differs per device; resuming must restore each one)."""
    host = parallel.unreplicate(state.replace(reducer_state=()))
    gathered = jax.tree.map(lambda x: distributed.gather_rows(parallel.local_values(x)),
                            state.reducer_state)
    return host.replace(reducer_state=gathered)
