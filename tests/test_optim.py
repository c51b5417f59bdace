"""Tests for bt_jax.train.optim against a plain-numpy transcription of the reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict

from bt_jax.train import optim

WARMUP, TOTAL, BASE = 10, 40, 2.0
N_STEPS = 25  # warm-up ends at step 10, cosine runs for the remaining steps
RTOL, ATOL = 2e-5, 1e-7  # float32 norm/accumulation rounding over 25 steps


# --- reference (facebookresearch/barlowtwins main.py), plain numpy ----------

def ref_adjust_learning_rate(step, base, warmup_steps, total_steps):
    """The reference ``adjust_learning_rate`` multiplier (python floats)."""
    if step < warmup_steps:
        return base * step / warmup_steps
    step -= warmup_steps
    max_steps = total_steps - warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return base * q + 0.001 * base * (1 - q)


def ref_lars_step(params, grads, mus, lr_factor, lr_weights=0.2, lr_biases=0.0048,
                  weight_decay=1e-6, eta=0.001, momentum=0.9):
    """One reference LARS step on flat dicts of numpy arrays, in place."""
    for name, p in params.items():
        dp = grads[name]
        if p.ndim != 1:
            dp = dp + weight_decay * p
            param_norm = np.linalg.norm(p)
            update_norm = np.linalg.norm(dp)
            q = eta * param_norm / update_norm if (param_norm > 0 and update_norm > 0) else 1.0
            dp = dp * q
        mus[name] = momentum * mus[name] + dp
        lr = lr_factor * (lr_weights if p.ndim != 1 else lr_biases)
        params[name] = p - np.float32(lr) * mus[name]


# --- helpers ---------------------------------------------------------------

def make_params(seed=0):
    """Nested params with conv, dense, bias and BN leaves, as numpy float32."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return {
        "backbone": {"conv": {"kernel": f32(3, 3, 2, 4)},
                     "bn": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}},
        "projector": {"dense": {"kernel": f32(4, 6), "bias": f32(6)}},
    }


def flatten(tree):
    """Nested dict -> {'a/b/c': array} for the numpy reference."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): np.asarray(v) for path, v in flat}


def random_grads(rng, params):
    return jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)


def run_optax(tx, params, grad_seq):
    """Apply ``tx`` for each gradient in ``grad_seq``; returns final params."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for grads in grad_seq:
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_reference(params, grad_seq, schedule_fn):
    flat = flatten(params)
    mus = {k: np.zeros_like(v) for k, v in flat.items()}
    for step, grads in enumerate(grad_seq):
        ref_lars_step(flat, flatten(grads), mus, schedule_fn(step))
    return flat


def assert_trees_close(flat_ref, tree, rtol=RTOL, atol=ATOL):
    got = flatten(tree)
    assert got.keys() == flat_ref.keys()
    for k in flat_ref:
        np.testing.assert_allclose(got[k], flat_ref[k], rtol=rtol, atol=atol, err_msg=k)


def ref_schedule(step):
    return ref_adjust_learning_rate(step, BASE, WARMUP, TOTAL)


# --- LARS ------------------------------------------------------------------

def test_lars_matches_reference_through_warmup_and_cosine():
    params = make_params()
    rng = np.random.default_rng(1)
    grad_seq = [random_grads(rng, params) for _ in range(N_STEPS)]
    tx = optim.lars(optim.warmup_cosine_schedule(BASE, WARMUP, TOTAL))
    got = run_optax(tx, params, grad_seq)
    want = run_reference(params, grad_seq, ref_schedule)
    assert_trees_close(want, got)
    # Guard against a vacuous pass: every leaf actually moved.
    moved = {k: not np.allclose(v, flatten(params)[k]) for k, v in want.items()}
    assert all(moved.values()), moved


def test_lars_accepts_frozendict():
    params = make_params()
    grads = random_grads(np.random.default_rng(2), params)
    tx = optim.lars(optim.warmup_cosine_schedule(BASE, 0, TOTAL))
    got = run_optax(tx, FrozenDict(params), [FrozenDict(grads)] * 3)
    want = run_reference(params, [grads] * 3, lambda s: ref_adjust_learning_rate(s, BASE, 0, TOTAL))
    assert_trees_close(want, got)


def _optax_lars(schedule_fn):
    return optax.lars(schedule_fn, weight_decay=1e-6, trust_coefficient=0.001, momentum=0.9)


def test_optax_lars_ordering_differs_under_changing_lr():
    """optax.lars applies the lr before momentum: it must not match the reference."""
    params = {"dense": {"kernel": make_params()["projector"]["dense"]["kernel"]}}
    rng = np.random.default_rng(3)
    grad_seq = [random_grads(rng, params) for _ in range(N_STEPS)]
    schedule = optim.warmup_cosine_schedule(BASE, WARMUP, TOTAL)
    want = run_reference(params, grad_seq, ref_schedule)["dense/kernel"]

    ours = flatten(run_optax(optim.lars(schedule), params, grad_seq))["dense/kernel"]
    theirs = flatten(run_optax(_optax_lars(lambda c: 0.2 * schedule(c)), params, grad_seq))["dense/kernel"]
    np.testing.assert_allclose(ours, want, rtol=RTOL, atol=ATOL)
    start = params["dense"]["kernel"]
    # The ordering error is a sizeable fraction of the total movement.
    assert np.abs(theirs - want).max() > 0.05 * np.abs(want - start).max()


def test_optax_lars_equals_reference_at_constant_lr():
    """Sanity for the test above: with a constant lr the two orderings coincide."""
    params = {"dense": {"kernel": make_params()["projector"]["dense"]["kernel"]}}
    rng = np.random.default_rng(4)
    grad_seq = [random_grads(rng, params) for _ in range(5)]
    want = run_reference(params, grad_seq, lambda s: 1.0)
    theirs = run_optax(_optax_lars(optax.constant_schedule(0.2)), params, grad_seq)
    assert_trees_close(want, theirs)


@pytest.mark.parametrize("zero", ["param", "grad"])
def test_zero_norm_gives_trust_ratio_one(zero):
    p = np.zeros((3, 4), np.float32) if zero == "param" else np.ones((3, 4), np.float32)
    g = np.full((3, 4), 0.5, np.float32) if zero == "param" else np.zeros((3, 4), np.float32)
    tx = optim.lars(optax.constant_schedule(1.0), weight_decay=0.0)
    params = {"w": jnp.asarray(p)}
    updates, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
    # Ratio 1 means the update is exactly -lr * (g + wd * p) with wd = 0.
    assert np.all(np.isfinite(updates["w"]))
    np.testing.assert_allclose(updates["w"], -0.2 * g, rtol=1e-6)


# --- schedule ----------------------------------------------------------------

def test_schedule_values():
    sched = optim.warmup_cosine_schedule(BASE, WARMUP, TOTAL)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(sched(WARMUP // 2), BASE / 2, rtol=1e-6)
    np.testing.assert_allclose(sched(WARMUP), BASE, rtol=1e-6)
    np.testing.assert_allclose(sched(TOTAL), 0.001 * BASE, rtol=1e-5)
    for step in range(TOTAL + 1):
        np.testing.assert_allclose(sched(step), ref_schedule(step), rtol=1e-5, atol=1e-7)


def test_schedule_without_warmup():
    sched = optim.warmup_cosine_schedule(BASE, 0, TOTAL)
    np.testing.assert_allclose(sched(0), BASE, rtol=1e-6)
    np.testing.assert_allclose(sched(TOTAL), 0.001 * BASE, rtol=1e-5)
    assert np.isfinite(float(sched(TOTAL // 2)))


def test_schedule_degenerate_lengths_are_finite():
    sched = optim.warmup_cosine_schedule(BASE, WARMUP, WARMUP)
    values = np.array([sched(s) for s in range(WARMUP + 3)])
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values[WARMUP], BASE, rtol=1e-6)
    np.testing.assert_allclose(values[WARMUP + 1:], 0.001 * BASE, rtol=1e-5)
    np.testing.assert_allclose(optim.warmup_cosine_schedule(BASE, 0, 0)(0), BASE, rtol=1e-6)


def test_group_learning_rates():
    sched = optim.warmup_cosine_schedule(BASE, WARMUP, TOTAL)
    lrs = optim.group_learning_rates(sched, WARMUP)
    np.testing.assert_allclose(lrs["lr_weights"], BASE * 0.2, rtol=1e-6)
    np.testing.assert_allclose(lrs["lr_biases"], BASE * 0.0048, rtol=1e-6)
    lrs = optim.group_learning_rates(sched, 0, lr_weights=1.0, lr_biases=1.0)
    assert float(lrs["lr_weights"]) == 0.0 and float(lrs["lr_biases"]) == 0.0


# --- backbone learning-rate scale ---------------------------------------------

def test_labels():
    labels = optim.param_group_labels(make_params(), separate_backbone=True)
    assert labels["backbone"]["conv"]["kernel"] == "backbone_weights"
    assert labels["backbone"]["bn"]["scale"] == "backbone_biases"
    assert labels["projector"]["dense"]["kernel"] == "weights"
    assert labels["projector"]["dense"]["bias"] == "biases"
    assert optim.param_group_labels(make_params())["backbone"]["bn"]["bias"] == "biases"


def test_backbone_frozen_exactly():
    params = make_params()
    rng = np.random.default_rng(5)
    grad_seq = [random_grads(rng, params) for _ in range(4)]
    tx = optim.lars(optim.warmup_cosine_schedule(BASE, 1, TOTAL), backbone_lr_scale=0.0)
    got = run_optax(tx, params, grad_seq)
    for path, leaf in flatten(got).items():
        before = flatten(params)[path]
        if path.startswith("backbone/"):
            np.testing.assert_array_equal(leaf, before, err_msg=path)
        else:
            assert not np.allclose(leaf, before), path


def _first_update(tx, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return flatten(updates)


def test_backbone_half_lr_halves_first_update():
    params = make_params()
    grads = random_grads(np.random.default_rng(6), params)
    # No warm-up so step 0 has a non-zero rate; from zero momentum update = -lr * dp.
    sched = optim.warmup_cosine_schedule(BASE, 0, TOTAL)
    full = _first_update(optim.lars(sched), params, grads)
    half = _first_update(optim.lars(sched, backbone_lr_scale=0.5), params, grads)
    for path in full:
        # Scaling by a power of two is exact in floating point.
        factor = 0.5 if path.startswith("backbone/") else 1.0
        np.testing.assert_array_equal(half[path], factor * full[path], err_msg=path)


def test_trust_ratio_equals_optax_and_keeps_its_state():
    rng = np.random.default_rng(5)
    params = {"w": rng.normal(size=(6, 5)).astype(np.float32),
              "zero_w": np.zeros((4, 3), np.float32),
              "k": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}
    updates = {"w": rng.normal(size=(6, 5)).astype(np.float32),
               "zero_w": rng.normal(size=(4, 3)).astype(np.float32),
               "k": np.zeros((3, 3, 2, 4), np.float32)}
    ours, theirs = optim._scale_by_trust_ratio(0.001), optax.scale_by_trust_ratio(
        trust_coefficient=0.001)
    assert jax.tree.structure(ours.init(params)) == jax.tree.structure(theirs.init(params))
    got, _ = jax.jit(ours.update)(updates, ours.init(params), params)
    want, _ = jax.jit(theirs.update)(updates, theirs.init(params), params)
    for name in params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=0, err_msg=name)
    with pytest.raises(ValueError, match="needs params"):
        ours.update(updates, ours.init(params))
