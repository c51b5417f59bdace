"""The training loop end to end on tiny synthetic data and 8 CPU devices."""

import json

import jax
import numpy as np
import pytest

from bt_jax.runtime import parallel
from bt_jax.train import loop, reducers
from bt_jax.network.network import Network
from bt_jax.runtime.checkpointing import Checkpointer
from bt_jax.train.inputs import load_data
from bt_jax.train.optim import make_optimizer
from bt_jax.train.state import initial_state, state_to_devices
from bt_jax.train.step import compile_steps
from bt_jax.evaluation.plots import plot_training


def _setup(config, workdir):
    data = load_data(config, str(workdir), Network(config, progress=False))
    tx, schedule = make_optimizer(config, data.train.steps_per_epoch(config.optim.batch_size))
    reducer = reducers.make_reducer(config)
    return data, tx, schedule, compile_steps(config, tx, reducer), \
        initial_state(config, tx, reducer)


def test_one_step_keeps_replicas_identical_and_compiles_once(tiny, tmp_path, compile_counter):
    data, tx, _, steps, state = _setup(tiny, tmp_path)
    mesh = parallel.device_mesh(8)
    state = state_to_devices(state, mesh)
    batches = parallel.prefetch_to_devices(data.train.batches(0, 16, devices=8), mesh, 2)
    for i in range(3):
        views = next(batches)
        if i == 1:
            compile_counter.count = 0
        state, metrics = steps.train(state, views)
    assert compile_counter.count == 0  # steps after the first reuse the compiled step
    for leaf in jax.tree.leaves(state):
        per_device = np.asarray(leaf)
        assert np.array_equal(per_device, np.broadcast_to(per_device[0], per_device.shape))
    assert int(np.asarray(state.step)[0]) == 3
    assert np.isfinite(np.asarray(metrics["loss"])).all()


def test_end_to_end_run_writes_metrics_results_and_checkpoints(tiny, tmp_path):
    tiny.evals.knn.every_epochs = 1
    results = loop.train_and_evaluate(tiny, str(tmp_path))
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "loss" in l]
    vals = [l for l in lines if "val_loss" in l]
    assert len(vals) == tiny.train.epochs
    # The learning curve, every epoch; its last point is the end-of-run evaluation's.
    assert all(0.0 <= l["knn_accuracy"] <= 1.0 for l in vals)
    assert vals[-1]["knn_accuracy"] == results["trained"]["accuracy"]
    plot = tmp_path / "curve.png"
    plot_training(str(tmp_path / "metrics.jsonl"), str(plot), title="tiny",
                  final={"raw pixels": results["raw_pixels"]["accuracy"]},
                  last_knn=results["trained"]["accuracy"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"epoch", "step", "lr_weights", "lr_biases", "loss", "images_per_s",
            "wall_time"} <= set(steps[0])
    assert all(np.isfinite(l["loss"]) for l in steps)
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "best").is_dir()
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("trained", "untrained", "raw_pixels"):
        assert 0.0 <= saved[key]["accuracy"] <= 1.0
        assert saved[key]["probes"] > 0
    assert results["trained"] == saved["trained"]


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_mid_epoch_continues_exactly_as_uninterrupted(tiny, tmp_path, monkeypatch):
    """With PowerSGD, whose error feedback differs per device and must resume per device."""
    tiny.train.checkpoint_every_steps = 3
    tiny.reducer.name = "powersgd"
    tiny.reducer.powersgd.rank = 2
    tiny.reducer.powersgd.start_iter = 1
    loop.train_and_evaluate(tiny, str(tmp_path / "full"))

    compile_steps = loop.compile_steps

    def crashing_compile(*args):
        steps = compile_steps(*args)
        calls = []

        def step(*a):
            calls.append(1)
            if len(calls) == 5:  # after the mid-epoch checkpoint at step 3 (4 steps/epoch)
                raise _Crash()
            return steps.train(*a)
        return steps._replace(train=step)

    monkeypatch.setattr(loop, "compile_steps", crashing_compile)
    with pytest.raises(_Crash):
        loop.train_and_evaluate(tiny, str(tmp_path / "resumed"))
    monkeypatch.setattr(loop, "compile_steps", compile_steps)
    loop.train_and_evaluate(tiny, str(tmp_path / "resumed"))

    template = initial_state(tiny, *_tx_and_reducer(tiny))
    full = Checkpointer(str(tmp_path / "full")).restore_latest(template)
    resumed = Checkpointer(str(tmp_path / "resumed")).restore_latest(template)
    assert int(full.step) == int(resumed.step) == 8
    errors = jax.tree.leaves(full.reducer_state.error)
    assert any(np.ptp(e, axis=0).max() > 0 for e in errors)  # per-device state is real
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _tx_and_reducer(config):
    tx, _ = make_optimizer(config, 4)
    return tx, reducers.make_reducer(config)


@pytest.mark.slow
def test_inception_backbone_trains_under_pmap(tiny, tmp_path):
    """FaceNet's architecture (tiny variant) through the same step: finite loss, replicas
    equal, BatchNorm statistics updated from the batch."""
    tiny.model.arch = "tiny_inception"
    tiny.data.image_size = 80
    tiny.data.normalization = "facenet"
    data, _, _, steps, state = _setup(tiny, tmp_path)
    before = state.batch_stats
    state = state_to_devices(state, parallel.device_mesh(8))
    state, metrics = steps.train(state, next(data.train.batches(0, 16, devices=8)))
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    after = parallel.unreplicate(state.batch_stats)
    stem = after["backbone"]["Conv2d_1a_3x3"]["BatchNorm"]["mean"]
    assert not np.allclose(stem, before["backbone"]["Conv2d_1a_3x3"]["BatchNorm"]["mean"])
    assert np.allclose(np.asarray(state.params["backbone"]["Block8"]["Conv2d_1x1"]["bias"]),
                       np.asarray(state.params["backbone"]["Block8"]["Conv2d_1x1"]["bias"])[0])
