"""Gradient reducers: how per-device gradients become the one applied gradient.

A reducer is an ``optax.GradientTransformation`` whose ``update`` runs inside the
per-device step and communicates over ``bt_jax.parallel.AXIS``. Its state is a
NamedTuple kept in the TrainState, so it is checkpointed and resumed with the rest.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from bt_jax.parallel import AXIS


class ExactMeanState(NamedTuple):
    """The exact all-reduce keeps no state."""


def exact_mean(axis_name: str = AXIS) -> optax.GradientTransformation:
    """Average gradients over ``axis_name`` (the exact all-reduce)."""

    def init_fn(params):
        del params
        return ExactMeanState()

    def update_fn(grads, state, params=None):
        del params
        return jax.lax.pmean(grads, axis_name), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_reducer(config) -> optax.GradientTransformation:
    """Build the reducer named by ``config.reducer.name``."""
    name = config.reducer.name
    if name == "exact":
        return exact_mean()
    raise ValueError(
        f"config.reducer.name={name!r} is not a known gradient reducer; use 'exact'.")
