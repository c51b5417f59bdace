"""LARS and its learning-rate schedule, as the Barlow Twins reference defines them.

The reference (facebookresearch/barlowtwins ``main.py``) uses a LARS variant that
differs from :func:`optax.lars` in one important way: momentum is accumulated on
the trust-ratio-scaled gradient *before* the learning rate is applied
(``mu = m * mu + dp; p -= lr * mu``), whereas ``optax.lars`` scales by the
learning rate first and then accumulates momentum. The two agree only while the
learning rate is constant, and Barlow Twins changes it every step (warm-up then
cosine), so ``optax.lars`` is *not* a drop-in replacement.

Per parameter, with gradient ``dp``::

    if p.ndim != 1: dp += weight_decay * p                       # weights only
    if p.ndim != 1: dp *= eta * |p| / |dp|  (1 if either norm is 0)
    mu = momentum * mu + dp
    p -= lr_group * mu

with ``lr_group = schedule(step) * lr_weights`` for weights (``ndim != 1``) and
``schedule(step) * lr_biases`` for biases and BatchNorm parameters (``ndim == 1``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

WEIGHTS = "weights"
BIASES = "biases"
BACKBONE_PREFIX = "backbone_"


def warmup_cosine_schedule(
    base_lr: float, warmup_steps: int, total_steps: int, end_factor: float = 0.001
) -> optax.Schedule:
    """Linear warm-up then cosine decay, as the reference ``adjust_learning_rate``.

    ``step`` is counted from 0, so step 0 has learning rate 0 during warm-up (the
    reference calls ``adjust_learning_rate`` before the first optimizer step).
    During the cosine phase the rate goes from ``base_lr`` to
    ``end_factor * base_lr``, reached exactly at ``total_steps``.

    Degenerate cases, which the reference would divide by zero on:
      * ``warmup_steps == 0``: no warm-up; the cosine phase starts at step 0.
      * ``total_steps <= warmup_steps``: the cosine phase is treated as one step
        long, so the rate is ``base_lr`` at ``warmup_steps`` and the end value
        afterwards.
    Steps past ``total_steps`` hold the end value instead of letting the cosine
    climb back up (the reference never reaches them).

    Args:
      base_lr: peak multiplier; the reference uses ``global_batch / 256``.
      warmup_steps: number of linear warm-up steps (10 epochs in the reference).
      total_steps: epochs * steps_per_epoch.
      end_factor: final rate as a fraction of ``base_lr``.

    Returns:
      A jit-compatible function ``step -> learning rate``.
    """
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError("warmup_steps and total_steps must be non-negative")
    # max(.., 1) only guards the degenerate lengths documented above; for the
    # normal case the denominators are unchanged.
    warmup_len = max(warmup_steps, 1)
    decay_len = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, dtype=jnp.float32)
        warm = base_lr * step / warmup_len
        progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
        q = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        decayed = base_lr * q + end_factor * base_lr * (1.0 - q)
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def _top_level_key(path) -> object:
    """The key of the first entry of a tree path (dict/FrozenDict key), or None."""
    if not path:
        return None
    return getattr(path[0], "key", None)


def param_group_labels(params, *, backbone_key: str = "backbone", separate_backbone: bool = False):
    """Label every leaf ``'weights'`` (``ndim != 1``) or ``'biases'`` (``ndim == 1``).

    The ``ndim == 1`` rule is the reference's: it catches biases and BatchNorm
    scale/bias; everything else, including scalars, counts as a weight.

    Args:
      params: a nested dict or FrozenDict of arrays (flax ``variables['params']``).
      backbone_key: top-level key of the backbone sub-tree.
      separate_backbone: if True, leaves under ``params[backbone_key]`` get the
        prefix ``'backbone_'`` (``'backbone_weights'``, ``'backbone_biases'``), so
        they can be given their own learning rate.

    Returns:
      A pytree of strings with the same structure as ``params``.
    """

    def label(path, leaf):
        group = BIASES if jnp.ndim(leaf) == 1 else WEIGHTS
        if separate_backbone and _top_level_key(path) == backbone_key:
            return BACKBONE_PREFIX + group
        return group

    return jax.tree_util.tree_map_with_path(label, params)


def _l2_norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _scale_by_trust_ratio(trust_coefficient: float) -> optax.GradientTransformation:
    """``optax.scale_by_trust_ratio(trust_coefficient=...)``, each norm computed once.

    optax takes its norms through ``safe_norm``, which stays differentiable by writing a
    masked copy of every parameter and update and taking each norm twice: a quarter of
    Inception-ResNet-v1's LARS time on the CPU. Nothing differentiates the optimizer, so
    the plain norms give the same ratio, with the same rule: 1 when either norm is 0.
    The state is optax's empty state, so checkpoints do not change.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("the LARS trust ratio needs params: call update(g, s, params)")

        def scale(update, param):
            p, u = _l2_norm(param), _l2_norm(update)
            ratio = jnp.where((p == 0) | (u == 0), 1.0, trust_coefficient * p / u)
            return update * ratio.astype(update.dtype)

        return jax.tree.map(scale, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _lars_branch(
    schedule: optax.Schedule, lr: float, *, is_weight: bool, weight_decay: float, eta: float, momentum: float
) -> optax.GradientTransformation:
    """One parameter group of the reference LARS, in the reference's order."""
    steps = []
    if is_weight:
        steps.append(optax.add_decayed_weights(weight_decay))
        # The ratio is 1 when either norm is 0, the reference's rule.
        steps.append(_scale_by_trust_ratio(eta))
    # Momentum before the learning rate: this is where optax.lars differs.
    steps.append(optax.trace(decay=momentum, nesterov=False))
    # scale_by_schedule counts from 0 and calls schedule(count) before
    # incrementing, so the first update uses schedule(0), as the reference does.
    steps.append(optax.scale_by_schedule(lambda count: -lr * schedule(count)))
    return optax.chain(*steps)


def lars(
    schedule: optax.Schedule,
    *,
    lr_weights: float = 0.2,
    lr_biases: float = 0.0048,
    weight_decay: float = 1e-6,
    eta: float = 0.001,
    momentum: float = 0.9,
    backbone_lr_scale: float | None = None,
    backbone_key: str = "backbone",
) -> optax.GradientTransformation:
    """The Barlow Twins reference LARS as an optax transformation.

    Args:
      schedule: step -> multiplier (e.g. :func:`warmup_cosine_schedule`); each
        group's rate is ``schedule(step) * lr_<group>``.
      lr_weights: group rate for parameters with ``ndim != 1``.
      lr_biases: group rate for parameters with ``ndim == 1`` (biases, BN).
      weight_decay: L2 coefficient added to the gradient of weights only.
      eta: LARS trust coefficient (weights only).
      momentum: heavy-ball momentum, applied before the learning rate.
      backbone_lr_scale: if not None, parameters under ``params[backbone_key]``
        get their group rate multiplied by this. ``0.0`` freezes them exactly:
        their updates are zeros and they carry no optimizer state.
      backbone_key: top-level key of the backbone sub-tree.

    Returns:
      An ``optax.GradientTransformation``; ``update`` requires ``params``.
    """
    if backbone_lr_scale is not None and backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    hyper = dict(weight_decay=weight_decay, eta=eta, momentum=momentum)
    transforms = {
        WEIGHTS: _lars_branch(schedule, lr_weights, is_weight=True, **hyper),
        BIASES: _lars_branch(schedule, lr_biases, is_weight=False, **hyper),
    }
    separate = backbone_lr_scale is not None
    if separate:
        for group, lr, is_weight in ((WEIGHTS, lr_weights, True), (BIASES, lr_biases, False)):
            if backbone_lr_scale == 0.0:
                branch = optax.set_to_zero()
            else:
                branch = _lars_branch(schedule, lr * backbone_lr_scale, is_weight=is_weight, **hyper)
            transforms[BACKBONE_PREFIX + group] = branch

    def labels(params):
        return param_group_labels(params, backbone_key=backbone_key, separate_backbone=separate)

    return optax.multi_transform(transforms, labels)


def _adamw_branch(schedule, lr: float, *, is_weight: bool, weight_decay: float):
    steps = [optax.scale_by_adam()]
    if is_weight:  # decoupled decay, on weights only (not biases or BatchNorm)
        steps.append(optax.add_decayed_weights(weight_decay))
    steps.append(optax.scale_by_schedule(lambda count: -lr * schedule(count)))
    return optax.chain(*steps)


def adamw(schedule: optax.Schedule, *, lr: float = 1e-3, weight_decay: float = 1e-4,
          backbone_lr_scale: float | None = None,
          backbone_key: str = "backbone") -> optax.GradientTransformation:
    """AdamW with rate ``lr * schedule(step)``, the same parameter groups as :func:`lars`:
    decay on weights (``ndim != 1``) only, and the backbone's rate scaled by
    ``backbone_lr_scale`` (``0.0`` freezes it)."""
    if backbone_lr_scale is not None and backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    transforms = {WEIGHTS: _adamw_branch(schedule, lr, is_weight=True, weight_decay=weight_decay),
                  BIASES: _adamw_branch(schedule, lr, is_weight=False, weight_decay=weight_decay)}
    separate = backbone_lr_scale is not None
    if separate:
        for group, is_weight in ((WEIGHTS, True), (BIASES, False)):
            transforms[BACKBONE_PREFIX + group] = (
                optax.set_to_zero() if backbone_lr_scale == 0.0 else _adamw_branch(
                    schedule, lr * backbone_lr_scale, is_weight=is_weight,
                    weight_decay=weight_decay))

    def labels(params):
        return param_group_labels(params, backbone_key=backbone_key, separate_backbone=separate)

    return optax.multi_transform(transforms, labels)


def group_learning_rates(schedule, step, *, lr_weights=0.2, lr_biases=0.0048) -> dict:
    """The two group learning rates at ``step``, for logging.

    Returns:
      ``{'lr_weights': schedule(step) * lr_weights, 'lr_biases': schedule(step) * lr_biases}``.
    """
    factor = schedule(step)
    return {"lr_weights": factor * lr_weights, "lr_biases": factor * lr_biases}


def make_optimizer(config, steps_per_epoch: int):
    """LARS (the reference, rates scaled by global_batch / 256) or AdamW (config.optim.lr),
    with the warm-up/cosine schedule."""
    o = config.optim
    if o.name not in ("lars", "adamw"):
        raise ValueError(f"config.optim.name={o.name!r} is unknown; use 'lars' or 'adamw'.")
    schedule = warmup_cosine_schedule(
        base_lr=o.batch_size / 256 if o.name == "lars" else 1.0,
        warmup_steps=o.warmup_epochs * steps_per_epoch,
        total_steps=config.train.epochs * steps_per_epoch, end_factor=o.end_factor)
    if o.name == "adamw":
        return adamw(schedule, lr=o.lr, weight_decay=o.weight_decay,
                     backbone_lr_scale=o.backbone_lr_scale), schedule
    tx = lars(schedule, lr_weights=o.lr_weights, lr_biases=o.lr_biases,
              weight_decay=o.weight_decay, eta=o.eta, momentum=o.momentum,
              backbone_lr_scale=o.backbone_lr_scale)
    return tx, schedule


def group_rates(config):
    """(weights, biases) rates that the schedule multiplies, for the log."""
    o = config.optim
    return (o.lr, o.lr) if o.name == "adamw" else (o.lr_weights, o.lr_biases)
