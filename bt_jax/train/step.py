"""The per-device steps and their compilation: pure functions of their arguments that talk
to other devices only over ``AXIS``; ``compile_steps`` applies ``pmap`` (and donation) to
them in one place. The embedding step they share with evaluation is
``bt_jax.network.embedding.embed_step``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bt_jax.network import embedding
from bt_jax.runtime import parallel
from bt_jax.runtime.parallel import AXIS
from bt_jax.train.losses import barlow_twins_loss
from bt_jax.train.state import TrainState


def training_views(state, views, config):
    """This device's two views as the network trains on them: a key per step and device
    for the augmentation (``embedding.training_input`` decides what applies)."""
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
    k1, k2 = jax.random.split(rng)
    return (embedding.training_input(k1, views[0], config, view=0),
            embedding.training_input(k2, views[1], config, view=1))


def train_step(state: TrainState, views, *, model, tx, reducer, config):
    """One Barlow Twins step on this device's slice ``views`` (2, b, H, W, 3) uint8."""
    x1, x2 = training_views(state, views, config)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (z1, z2), new = model.apply(variables, x1, x2, train=True, mutable=["batch_stats"])
        loss = barlow_twins_loss(z1, z2, lambd=config.loss.lambd, axis_name=AXIS)
        return loss, new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, loss, grads, batch_stats, tx=tx, reducer=reducer)


def apply_gradients(state: TrainState, loss, grads, batch_stats, *, tx, reducer):
    """Reduce this device's gradients over AXIS, take the LARS step, return the metrics."""
    grads, reducer_state = reducer.update(grads, state.reducer_state, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                          opt_state=opt_state, reducer_state=reducer_state)
    # param_norm turns Inf/NaN in the new weights into a metric the host checks before
    # any checkpoint of this state is written.
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(params)}


def eval_step(state: TrainState, views, mask, *, model, config):
    """Validation loss on a padded slice: BN in inference mode, padding masked out."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    z1, z2 = model.apply(variables, embedding.network_input(views[0], config),
                         embedding.network_input(views[1], config), train=False)
    loss = barlow_twins_loss(z1, z2, lambd=config.loss.lambd, axis_name=AXIS, mask=mask)
    return loss, jax.lax.psum(jnp.sum(mask), AXIS)


class Steps(NamedTuple):
    train: Any
    eval: Any
    embed: Any


def compile_steps(config, tx, reducer) -> Steps:
    """pmap the per-device steps over AXIS; the train step donates its state."""
    model = embedding.create_model(config, axis_name=AXIS)
    train = functools.partial(train_step, model=model, tx=tx, reducer=reducer, config=config)
    evals = functools.partial(eval_step, model=model, config=config)
    pmap = functools.partial(jax.pmap, axis_name=AXIS,
                             devices=parallel.pmap_devices(config.num_devices))
    return Steps(pmap(train, donate_argnums=(0,)), pmap(evals),
                 embedding.compile_embed(config, model))
