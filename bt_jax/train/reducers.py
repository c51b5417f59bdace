"""Gradient reducers: how per-device gradients become the one applied gradient.

A reducer is an ``optax.GradientTransformation`` whose ``update`` runs inside the
per-device step and communicates over ``bt_jax.runtime.parallel.AXIS``. Its state is a
NamedTuple kept in the TrainState, so it is checkpointed and resumed with the rest.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import jax
import numpy as np
import optax

from bt_jax.runtime.parallel import AXIS
from bt_jax.train.powersgd import compression_stats, powersgd


class ExactMeanState(NamedTuple):
    """The exact all-reduce keeps no state."""


def exact_mean(axis_name: str = AXIS) -> optax.GradientTransformation:
    """Average gradients over ``axis_name`` (the exact all-reduce)."""

    def init_fn(params):
        del params
        return ExactMeanState()

    def update_fn(grads, state, params=None):
        del params
        if jax.lax.axis_size(axis_name) == 1:
            # XLA's CPU all-reduce copies every gradient even with one participant.
            return grads, state
        return jax.lax.pmean(grads, axis_name), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_reducer(config) -> optax.GradientTransformation:
    """Build the reducer named by ``config.reducer.name``."""
    name = config.reducer.name
    if name == "exact":
        return exact_mean()
    if name == "powersgd":
        return powersgd(**config.reducer.powersgd.to_dict())
    raise ValueError(
        f"config.reducer.name={name!r} is not a known gradient reducer; "
        "use 'exact' or 'powersgd'.")


def communication(config, params) -> Tuple[int, int, int]:
    """(floats an exact all-reduce sends per step, floats this reducer sends once active,
    the step from which it is active). Static per model, so computed once on the host."""
    exact = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if config.reducer.name != "powersgd":
        return exact, exact, 0
    p = config.reducer.powersgd
    stats = compression_stats(params, rank=p.rank, min_compression_rate=p.min_compression_rate,
                              power_iterations=p.power_iterations)
    return exact, int(stats["powersgd_floats"]), int(p.start_iter)
