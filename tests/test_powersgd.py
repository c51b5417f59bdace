"""PowerSGD reducer on 8 simulated CPU devices (pmap over AXIS, one shard_map check)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, PartitionSpec

from bt_jax.train import powersgd as psgd
from bt_jax.runtime import parallel
from bt_jax.train import reducers
from bt_jax.models.barlow import Projector
from bt_jax.models.resnet import resnet50
from bt_jax.runtime.parallel import AXIS
from configs_loader import load_config

N = 8


def _params():
    """conv -> (18, 4); dense -> (6, 5); wide -> (12, 10), which exceeds the Gram-Schmidt
    rank limit at rank 10 and so takes the QR path; bias stays on the exact pmean."""
    return {"conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32)},
            "dense": {"kernel": np.zeros((6, 5), np.float32),
                      "bias": np.zeros((5,), np.float32)},
            "wide": {"kernel": np.zeros((12, 10), np.float32)}}


def _setup(params, traces=None, **options):
    """(pmapped update, replicated initial state) for ``powersgd(**options)``; each
    trace of the update appends to ``traces``."""
    tx = psgd.powersgd(**options)
    state = parallel.replicate(tx.init(params), parallel.device_mesh(N))

    def update(grads, state):
        if traces is not None:
            traces.append(1)
        return tx.update(grads, state)
    return jax.pmap(update, axis_name=AXIS), state


def _grads(rng, params):
    return jax.tree.map(lambda x: rng.normal(size=(N,) + x.shape).astype(np.float32), params)


def _close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def _device0(tree):
    return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def _mean(grads):
    return jax.tree.map(lambda x: x.mean(0), grads)


@pytest.mark.parametrize("power_iterations", [1, 2])
def test_full_rank_equals_exact_mean(power_iterations):
    assert psgd._GRAM_SCHMIDT_MAX_RANK < 10  # 'wide' exercises the QR path
    update, state = _setup(_params(), rank=10, min_compression_rate=0.0, start_iter=0,
                           power_iterations=power_iterations)
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second step starts from a warm Q and a (tiny) error
        grads = _grads(rng, _params())
        out, state = update(grads, state)
        _close(_device0(out), _mean(grads), 1e-5)
        _close(out, jax.tree.map(lambda x: np.broadcast_to(x[:1], x.shape), out), 0.0)


def _spectrum_matrix(rng, singular_values, shape=(24, 16)):
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], len(singular_values))))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], len(singular_values))))
    return (u * np.asarray(singular_values)) @ v.T


def _repeat(update, state, g, steps):
    grads = {"w": np.broadcast_to(g.astype(np.float32), (N,) + g.shape)}
    outs = []
    for _ in range(steps):
        out, state = update(grads, state)
        outs.append(np.asarray(out["w"])[0])
    return outs


def test_same_gradient_with_warm_start_converges():
    rng = np.random.default_rng(1)
    g = _spectrum_matrix(rng, [8, 4, 2, 1, 0.5, 0.25])
    params = {"w": np.zeros(g.shape, np.float32)}
    u, s, vt = np.linalg.svd(g)
    best_rank2 = (u[:, :2] * s[:2]) @ vt[:2]
    # Without error feedback, warm start makes the steps one long power iteration:
    # the update converges to the best rank-2 approximation (ratio s3/s2 = 1/2 per step).
    warm = _repeat(*_setup(params, rank=2, start_iter=0, error_feedback=False), g, 30)
    np.testing.assert_allclose(warm[-1], best_rank2, atol=1e-4)
    cold = _repeat(*_setup(params, rank=2, start_iter=0, error_feedback=False,
                           warm_start=False), g, 30)
    assert np.abs(cold[-1] - best_rank2).max() > 1e-2  # one iteration per step is not enough
    # With error feedback the running mean of the updates converges to the exact mean.
    outs = _repeat(*_setup(params, rank=2, start_iter=0), g, 80)
    errors = [np.linalg.norm(np.mean(outs[:t], 0) - g) / np.linalg.norm(g) for t in (10, 80)]
    assert errors[1] < 0.05 and errors[1] < errors[0] / 4


def test_error_feedback_identity():
    update, state = _setup(_params(), rank=1, start_iter=0)
    rng = np.random.default_rng(2)
    applied = true = jax.tree.map(np.zeros_like, _params())
    for _ in range(6):
        grads = _grads(rng, _params())
        out, state = update(grads, state)
        applied = jax.tree.map(lambda a, o: a + np.asarray(o)[0], applied, out)
        true = jax.tree.map(lambda t, g: t + g.mean(0), true, grads)
    error = {"conv": {"kernel": np.asarray(state.error["conv"]["kernel"]).mean(0)},
             "dense": {"kernel": np.asarray(state.error["dense"]["kernel"]).mean(0),
                       "bias": 0.0},
             "wide": {"kernel": np.asarray(state.error["wide"]["kernel"]).mean(0)}}
    assert np.abs(error["wide"]["kernel"]).max() > 0.1  # rank 1 really lost something
    _close(jax.tree.map(np.add, applied, error), true, 1e-4)


def _reference_step(g, e, q):
    """One PowerSGD step written out with M formed, on (devices, n, m) arrays: the
    formula the reducer computes without forming M or P Q^T (one power iteration)."""
    m = g + e
    q = q / np.linalg.norm(q, axis=0, keepdims=True)
    p, _ = np.linalg.qr(np.einsum("dnm,mr->nr", m, q))  # psum(M Q), orthogonalised
    q = np.einsum("dnm,nr->mr", m, p) / len(g)  # psum(M^T P) / devices
    approx = p @ q.T
    return approx, m - approx, q


def test_matches_a_reference_with_m_formed():
    shape = (3, 3, 2, 4)
    params = {"w": np.zeros(shape, np.float32)}
    update, state = _setup(params, rank=2, start_iter=0, min_compression_rate=0.0)
    rng = np.random.default_rng(5)
    e = np.zeros((N, 18, 4))
    q = np.asarray(state.q["w"])[0].astype(np.float64)
    for _ in range(3):  # from the second step on, the error buffers differ per device
        g = rng.normal(size=(N,) + shape).astype(np.float32)
        out, state = update({"w": g}, state)
        approx, e, q = _reference_step(g.reshape(N, 18, 4).astype(np.float64), e, q)
        # QR's column signs are arbitrary, but P Q^T, the error and |Q| are not.
        np.testing.assert_allclose(np.asarray(out["w"]), np.broadcast_to(
            approx.reshape(shape), (N,) + shape), atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.error["w"]).reshape(N, 18, 4), e,
                                   atol=1e-5)
        np.testing.assert_allclose(np.abs(np.asarray(state.q["w"])[0]), np.abs(q),
                                   atol=1e-5)
    assert np.abs(e).max() > 0.1  # rank 2 of 4 really left an error


def test_zero_gradients_give_no_nan_and_the_next_step_recovers():
    update, state = _setup(_params(), rank=10, min_compression_rate=0.0, start_iter=0)
    zeros = jax.tree.map(lambda x: np.zeros((N,) + x.shape, np.float32), _params())
    for _ in range(2):
        out, state = update(zeros, state)
        for leaf in jax.tree.leaves((out, state)):
            assert np.isfinite(np.asarray(leaf)).all()
        _close(out, zeros, 0.0)
    # The zero step left Q all zero; the warm start must fall back to the initial Q.
    grads = _grads(np.random.default_rng(3), _params())
    out, _ = update(grads, state)
    _close(_device0(out), _mean(grads), 1e-5)


class _Small(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn")(x).mean((1, 2))
        x = nn.Dense(32, name="fc1")(x)
        x = nn.Dense(6, use_bias=False, name="fc2")(x)
        return nn.Dense(5, use_bias=False, name="head")(x)


def test_compressed_tensors_and_float_counts_match_a_hand_count():
    params = jax.eval_shape(_Small().init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 8)))
    params = params["params"]
    # rank 2, min rate 2; rate = n*m / ((n+m)*2), sent = (n+m)*2 when compressed:
    #   conv/kernel (3,3,8,16) -> 72x16: rate 1152/176 = 6.5  -> 176 (of 1152)
    #   fc1/kernel 16x32: rate 512/96 = 5.3                    -> 96  (of 512)
    #   fc2/kernel 32x6:  rate 192/76 = 2.5                    -> 76  (of 192)
    #   head/kernel 6x5:  rate 30/22 = 1.4 < 2, exact          -> 30
    #   bn/scale 16, bn/bias 16, fc1/bias 32: vectors, exact   -> 64
    # exact = 1152+512+192+30+64 = 1950; PowerSGD = 176+96+76+30+64 = 442
    stats = psgd.compression_stats(params, rank=2, min_compression_rate=2.0)
    assert sorted(stats["compressed"]) == ["conv/kernel", "fc1/kernel", "fc2/kernel"]
    assert sorted(stats["uncompressed"]) == ["bn/bias", "bn/scale", "fc1/bias", "head/kernel"]
    assert (stats["exact_floats"], stats["powersgd_floats"]) == (1950.0, 442.0)
    assert stats["ratio"] == pytest.approx(1950 / 442)
    # A second power iteration sends P and Q again: 442 + 176 + 96 + 76 = 790.
    assert psgd.compression_stats(params, 2, 2.0, power_iterations=2)["powersgd_floats"] == 790
    # The transformation compresses exactly those tensors: Q (m, r) there, scalars elsewhere.
    state = psgd.powersgd(rank=2).init(params)
    q_shapes = {k: v["kernel"].shape for k, v in state.q.items() if "kernel" in v}
    assert q_shapes == {"conv": (16, 2), "fc1": (32, 2), "fc2": (6, 2), "head": ()}
    assert state.error["fc2"]["kernel"].shape == (32, 6) and state.error["bn"]["scale"].shape == ()


def test_state_survives_an_orbax_round_trip_and_resumes_exactly(tmp_path):
    update, state = _setup(_params(), rank=2, start_iter=1)
    rng = np.random.default_rng(4)
    for _ in range(3):
        _, state = update(_grads(rng, _params()), state)
    host = jax.device_get(state)  # every device's copy: the error buffers differ
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    manager.save(3, args=ocp.args.StandardSave(host))
    manager.wait_until_finished()
    restored = manager.restore(3, args=ocp.args.StandardRestore(
        jax.tree.map(np.zeros_like, host)))
    manager.close()
    assert isinstance(restored, psgd.PowerSGDState)
    _close(restored, host, 0.0)
    grads = _grads(rng, _params())
    _close(update(grads, restored), update(grads, state), 0.0)


def test_exact_mean_before_start_iter_then_compression():
    traces = []
    update, state = _setup(_params(), traces, rank=1, min_compression_rate=0.0, start_iter=3)
    initial = _device0(state)
    rng = np.random.default_rng(5)
    for step in range(4):
        grads = _grads(rng, _params())
        out, state = update(grads, state)
        gap = np.abs(np.asarray(out["wide"]["kernel"])[0] - grads["wide"]["kernel"].mean(0))
        err = np.abs(np.asarray(state.error["wide"]["kernel"])).max()
        if step < 3:
            _close(_device0(out), _mean(grads), 1e-6)
            _close(_device0(state.q), initial.q, 0.0)
            assert err == 0.0
        else:
            assert gap.max() > 0.1 and err > 0.1
    assert int(np.asarray(state.step)[0]) == 4
    assert len(traces) == 1  # one compiled step serves both phases


def test_shard_map_matches_pmap():
    update, state = _setup(_params(), rank=2, start_iter=1)
    tx = psgd.powersgd(rank=2, start_iter=1)

    def per_device(g, s):
        out = tx.update(*jax.tree.map(lambda x: x[0], (g, s)))
        return jax.tree.map(lambda x: x[None], out)

    mesh = Mesh(np.array(jax.devices()[:N]), (AXIS,))
    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=PartitionSpec(AXIS),
                                    out_specs=PartitionSpec(AXIS)))
    rng, other = np.random.default_rng(6), state
    for _ in range(2):
        grads = _grads(rng, _params())
        (out_a, state), (out_b, other) = update(grads, state), sharded(grads, other)
        _close((out_a, state), (out_b, other), 1e-6)


def test_full_model_rank4_ratio():
    """ResNet-50 at 244 px (8192 features) + the 2048-4096-8192 projector, shapes only."""
    key = jax.random.PRNGKey(0)
    backbone = jax.eval_shape(resnet50().init, key, jnp.zeros((1, 244, 244, 3)))
    projector = jax.eval_shape(Projector((2048, 4096, 8192)).init, key, jnp.zeros((1, 8192)))
    params = {"backbone": backbone["params"], "projector": projector["params"]}
    stats = psgd.compression_stats(params, rank=4, min_compression_rate=2.0)
    # 82,240,576 floats exact vs 497,868 with rank 4: 165.19x. All 56 kernels compressed
    # (the smallest, layer1 1x1 64x64, has rate 8); the 110 BN vectors stay exact.
    assert stats["ratio"] >= 150
    assert (stats["exact_floats"], stats["powersgd_floats"]) == (82240576.0, 497868.0)
    assert len(stats["compressed"]) == 56 and len(stats["uncompressed"]) == 110
    assert all(name.endswith("kernel") for name in stats["compressed"])


def test_config_switch_builds_powersgd():
    config = load_config("mlfw_powersgd")
    assert (config.reducer.name, config.reducer.powersgd.rank) == ("powersgd", 4)
    state = reducers.make_reducer(config).init({"w": np.zeros((64, 64), np.float32)})
    assert isinstance(state, psgd.PowerSGDState) and state.q["w"].shape == (64, 4)


def test_exact_mean_on_one_device_passes_gradients_through_without_a_collective():
    grads = {"w": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}
    tx = reducers.exact_mean()

    def reduce(g):
        return tx.update(g, tx.init(g))[0]

    update = jax.pmap(reduce, axis_name=AXIS, devices=jax.local_devices()[:1])
    np.testing.assert_array_equal(update(grads)["w"], grads["w"])
    jaxpr = str(jax.make_jaxpr(update)(grads))
    assert "psum" not in jaxpr and "pmean" not in jaxpr
    # With more devices the same reducer averages (test_full_rank_equals_exact_mean).
    many = jax.pmap(reduce, axis_name=AXIS)
    g8 = {"w": np.arange(N, dtype=np.float32).reshape(N, 1)}
    np.testing.assert_allclose(many(g8)["w"], np.full((N, 1), (N - 1) / 2))
