"""Preemption, exact resume after SIGKILL, divergence, failed checkpoint writes, multi-host."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bt_jax import reducers, train
from bt_jax.checkpointing import CheckpointWriteError, Checkpointer
from conftest import tiny_config, tiny_flags
from configs_loader import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 8  # tiny config: 2 epochs x 4 steps


def _command(workdir, *extra):
    return [sys.executable, str(REPO / "scripts" / "train.py"),
            f"--config={CONFIG_DIR / 'synthetic.py'}", f"--workdir={workdir}",
            *tiny_flags(), *extra]


def _final_state(workdir):
    config = tiny_config()
    tx, _ = train.make_optimizer(config, TOTAL_STEPS // config.train.epochs)
    template = train.initial_state(config, tx, reducers.make_reducer(config))
    ckpt = Checkpointer(str(workdir))
    try:
        return ckpt.restore_latest(template)
    finally:
        ckpt.close()


def _assert_same_state(a, b, atol=0.0):
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(tiny_config(), str(workdir))
    return _final_state(workdir)


def _wait_for_step(proc, workdir, step, timeout=240):
    """Block until metrics.jsonl records ``step`` (or later) or the process ends."""
    deadline = time.time() + timeout
    metrics = Path(workdir) / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}: rc={proc.poll()}")


def test_sigterm_saves_exits_75_and_resumes_exactly(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == train.PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Run the same command again to resume" in err
    stopped_at = int(_final_state(workdir).step)
    assert 2 <= stopped_at < TOTAL_STEPS
    subprocess.run(_command(workdir), check=True, capture_output=True, timeout=300)
    _assert_same_state(_final_state(workdir), uninterrupted)


def test_sigkill_at_random_step_then_restart_matches_uninterrupted(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    kill_after = int(np.random.default_rng().integers(2, TOTAL_STEPS - 1))
    proc = subprocess.Popen(_command(workdir, "--config.train.checkpoint_every_steps=1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(proc, workdir, kill_after)
    proc.kill()
    proc.wait(timeout=60)
    # A save cut short leaves only orbax's temporary folder, which restore ignores.
    junk = workdir / "checkpoints" / f"{TOTAL_STEPS + 5}.orbax-checkpoint-tmp-1"
    junk.mkdir(parents=True)
    (junk / "garbage").write_bytes(os.urandom(64))
    subprocess.run(_command(workdir), check=True, capture_output=True, timeout=300)
    _assert_same_state(_final_state(workdir), uninterrupted)


def test_divergence_names_the_step_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config()
    config.optim.lr_biases = 1e38  # BatchNorm scales overflow on the first non-zero lr step
    config.train.checkpoint_every_steps = 1
    config.train.log_every_steps = 1
    with pytest.raises(FloatingPointError, match=r"training diverged at step 2\b"):
        train.train_and_evaluate(config, str(tmp_path))
    kept = _final_state(tmp_path)
    assert int(kept.step) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(kept.params))


def test_checkpoint_write_failure_is_clear_and_keeps_earlier_checkpoint(tmp_path, monkeypatch):
    config = tiny_config()
    config.train.checkpoint_every_steps = 1
    real_save, calls = ocp.CheckpointManager.save, []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(CheckpointWriteError, match="step 3.*No space left.*step 2\\) is intact"):
        train.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert int(_final_state(tmp_path).step) == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_of_eight(uninterrupted, tmp_path):
    workdir = tmp_path / "multi"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen(
        _command(workdir, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    multi = _final_state(workdir)
    assert int(multi.step) == int(uninterrupted.step)
    # The parameters agree to 1e-6. Cross-process sums run in another order (gloo); the
    # BatchNorm running statistics and momenta carry that as ~1e-5 of each tensor's scale
    # (single entries near zero differ by up to 0.1% of themselves), so they are compared
    # against their tensor's largest magnitude.
    for x, y in zip(jax.tree.leaves(multi.params), jax.tree.leaves(uninterrupted.params)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(multi.rng, uninterrupted.rng)
    rest = lambda s: (s.batch_stats, s.opt_state)
    for x, y in zip(jax.tree.leaves(rest(multi)), jax.tree.leaves(rest(uninterrupted))):
        scale = max(1.0, float(np.abs(np.asarray(y, np.float64)).max()))
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-4 * scale)
