"""The 8-device Barlow Twins loss and its gradients equal one device on the global batch."""


import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.train.losses import barlow_twins_loss, cross_correlation
from bt_jax.runtime.parallel import AXIS

N_DEV = 8


def _numpy_loss(z1, z2, lambd):
    """Transcription of the reference: BN without affine, c = z1n^T z2n / N."""
    def bn(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    off = c - np.diag(np.diag(c))
    return ((1 - np.diag(c)) ** 2).sum() + lambd * (off ** 2).sum()


def _data(n=32, d=6, seed=0):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return z1, z2


def test_single_device_matches_numpy():
    z1, z2 = _data()
    got = barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2), lambd=0.0051)
    np.testing.assert_allclose(got, _numpy_loss(z1, z2, 0.0051), rtol=1e-5)


def test_identical_whitened_views_give_zero_loss():
    z = np.linalg.qr(np.random.default_rng(1).normal(size=(64, 4)))[0] * 8
    z = z - z.mean(0)
    c = cross_correlation(jnp.asarray(z), jnp.asarray(z))
    assert float(barlow_twins_loss(jnp.asarray(z), jnp.asarray(z))) < 1e-3
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-4)


def _sharded(x):
    return x.reshape(N_DEV, -1, *x.shape[1:])


def test_eight_device_loss_and_gradient_equal_global():
    assert jax.device_count() == N_DEV
    z1, z2 = _data(n=32, d=5)
    w = np.random.default_rng(2).normal(size=(5, 5)).astype(np.float32)

    def global_loss(w, a, b):
        return barlow_twins_loss(a @ w, b @ w)

    def device_step(w, a, b):
        loss, grad = jax.value_and_grad(
            lambda w: barlow_twins_loss(a @ w, b @ w, axis_name=AXIS))(w)
        return loss, jax.lax.pmean(grad, AXIS)

    p_step = jax.pmap(device_step, axis_name=AXIS, in_axes=(None, 0, 0))
    losses, grads = p_step(w, _sharded(z1), _sharded(z2))
    ref_loss, ref_grad = jax.value_and_grad(global_loss)(w, z1, z2)
    np.testing.assert_allclose(np.asarray(losses), float(ref_loss), rtol=1e-5)
    for g in np.asarray(grads):
        np.testing.assert_allclose(g, ref_grad, rtol=1e-5, atol=1e-6)


def test_per_device_loss_without_psum_differs():
    """Guards the test above: the earlier work's per-GPU c gives another loss."""
    z1, z2 = _data(n=32, d=5)
    local = np.mean([_numpy_loss(a, b, 0.0051) for a, b in zip(_sharded(z1), _sharded(z2))])
    assert abs(local - _numpy_loss(z1, z2, 0.0051)) > 1e-2


def test_mask_equals_dropping_padded_rows():
    z1, z2 = _data(n=12, d=4)
    pad1 = np.concatenate([z1, np.full((4, 4), 1e3, np.float32)])
    pad2 = np.concatenate([z2, np.full((4, 4), -7.0, np.float32)])
    mask = np.r_[np.ones(12), np.zeros(4)]
    got = barlow_twins_loss(jnp.asarray(pad1), jnp.asarray(pad2), mask=jnp.asarray(mask))
    np.testing.assert_allclose(got, _numpy_loss(z1, z2, 0.0051), rtol=1e-5)
