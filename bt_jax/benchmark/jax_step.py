"""Our Barlow Twins train step in the benchmarked variants, compiled once per variant.

The plain variant is exactly what ``loop.compile_steps`` builds (``loop.train_step``
under pmap with the state donated), on images or, with a frozen trunk, its activations.
The others change one lever each: the compute dtype (a field of the case), no donation,
or both views in one forward pass (``fused``).
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bt_jax.network import embedding
from bt_jax.runtime import parallel
from bt_jax.train import reducers
from bt_jax.train.optim import make_optimizer
from bt_jax.train.state import initial_state, state_to_devices
from bt_jax.train.step import apply_gradients, train_step, training_views
from bt_jax.data.pairs import device_layout
from bt_jax.train.losses import barlow_twins_loss
from bt_jax.models.barlow import BarlowTwins
from bt_jax.models.resnet import BN_MOMENTUM
from bt_jax.runtime.parallel import AXIS


class Variant(NamedTuple):
    """The levers of one JAX step; dtype and XLA flags belong to the case and process."""

    donate: bool = True
    fused: bool = False


def _sequential_stats(old, per_view, momentum: float = BN_MOMENTUM):
    """BatchNorm running stats as if view 1 then view 2 had updated them in turn.

    Under vmap each view updates from the same ``old``: s_i = m*old + (1-m)*b_i. The
    sequential result m*(m*old + (1-m)*b1) + (1-m)*b2 equals m*s_1 + s_2 - m*old.
    """
    return jax.tree.map(lambda r, s: momentum * s[0] + s[1] - momentum * r, old, per_view)


def fused_train_step(state, views, *, model, tx, reducer, config):
    """``loop.train_step`` with both views in one forward pass over a batch of 2B.

    The views are stacked and the embedding is vmapped over them: XLA folds the view
    axis into each convolution's batch, while BatchNorm still normalises every view with
    its own statistics and the running stats follow the sequential update. Same loss,
    gradients and state as ``loop.train_step`` up to float rounding (tested).
    """
    x = jnp.stack(training_views(state, views, config))

    def loss_fn(params):
        def embed(view):
            z, new = model.apply({"params": params, "batch_stats": state.batch_stats}, view,
                                 train=True, mutable=["batch_stats"], method=BarlowTwins.embed)
            return z, new["batch_stats"]

        z, per_view = jax.vmap(embed)(x)
        loss = barlow_twins_loss(z[0], z[1], lambd=config.loss.lambd, axis_name=AXIS)
        return loss, _sequential_stats(state.batch_stats, per_view)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, loss, grads, batch_stats, tx=tx, reducer=reducer)


def pmapped_step(config, tx, reducer, variant: Variant):
    """The variant's step under pmap, built the way ``loop.compile_steps`` builds it."""
    model = embedding.create_model(config, axis_name=AXIS)
    body = fused_train_step if variant.fused else train_step
    step = functools.partial(body, model=model, tx=tx, reducer=reducer, config=config)
    return jax.pmap(step, axis_name=AXIS, devices=parallel.pmap_devices(config.num_devices),
                    donate_argnums=(0,) if variant.donate else ())


def xla_flops(compiled) -> float:
    """FLOPs of one run of a compiled program (per device under pmap), from XLA."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan"))) if analysis else float("nan")


def random_inputs(config, shape, dtype, rng) -> np.ndarray:
    """A batch of what the step reads (``embedding.input_spec``): uint8 images, or a frozen
    trunk's activations (non-negative, as after the trunk's last ReLU and max-pool)."""
    shape = (config.optim.batch_size,) + tuple(shape)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return np.abs(rng.standard_normal(shape, np.float32)).astype(dtype)


def random_views(config, seed: int = 0) -> np.ndarray:
    """A fixed pair batch laid out for the devices, as the training loop feeds it."""
    rng = np.random.default_rng(seed)
    shape, dtype = embedding.input_spec(config)
    v1, v2 = (random_inputs(config, shape, dtype, rng) for _ in range(2))
    return device_layout(np.stack([v1, v2], axis=1), config.num_devices)


class JaxStep:
    """One compiled variant on a fixed batch already on the devices.

    ``host_state`` lets variants of one case share the (slow) initialisation; each keeps
    its own device copy because a donated state is consumed by the step.
    """

    def __init__(self, case, variant: Variant = Variant(), host_state=None, views=None):
        config = case.config()
        tx, _ = make_optimizer(config, steps_per_epoch=10)
        reducer = reducers.make_reducer(config)
        self.host_state = host_state or initial_state(config, tx, reducer)
        mesh = parallel.device_mesh(config.num_devices)
        self.state = state_to_devices(self.host_state, mesh)
        views = random_views(config) if views is None else views
        # On the devices once: the benchmark times the step, not the host-to-device copy.
        self.views = jax.device_put(views, NamedSharding(mesh, PartitionSpec(AXIS)))
        start = time.perf_counter()
        self.compiled = pmapped_step(config, tx, reducer, variant).lower(
            self.state, self.views).compile()
        self.compile_s = time.perf_counter() - start
        self.flops = xla_flops(self.compiled)
        self.images = 2 * config.optim.batch_size
        self.loss = float("nan")

    def __call__(self) -> float:
        """Run one step; seconds until its results are ready."""
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.views)
        jax.block_until_ready((self.state, metrics))
        elapsed = time.perf_counter() - start
        self.loss = float(np.asarray(metrics["loss"])[0])
        return elapsed

    def close(self) -> None:
        """Free the device copies (the next case may need the memory)."""
        self.state = self.views = self.compiled = None
