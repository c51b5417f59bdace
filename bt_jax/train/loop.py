"""The host loop: start-up (checks, data, compiled steps, a fresh or resumed state), then
step, log, evaluate what is due, checkpoint; the start and end evaluations around it.
``train_and_evaluate`` is what ``scripts/train.py`` calls.

The per-device steps are in ``bt_jax.train.step``, the inputs in ``bt_jax.train.inputs``,
the log in ``bt_jax.train.metrics`` and signal handling in ``bt_jax.runtime.preemption``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, NamedTuple

from tqdm.auto import tqdm

from bt_jax.data import sources
from bt_jax.network import network
from bt_jax.runtime import distributed, parallel, run_config
from bt_jax.runtime import workdir as workdir_files
from bt_jax.runtime.checkpointing import Checkpointer
from bt_jax.runtime.lock import FileLock, LockedError
from bt_jax.runtime.preemption import Preempted, StopRequest
from bt_jax.train import evaluators, reducers
from bt_jax.train.inputs import Data, load_data
from bt_jax.train.metrics import StepLog
from bt_jax.train.optim import make_optimizer
from bt_jax.train.state import (TrainState, initial_state, recalibrated, state_to_devices,
                                state_to_host)
from bt_jax.train.step import Steps, compile_steps


def check_config(config) -> network.Network:
    """Fail before any work on settings that cannot run; the config's network."""
    n, batch = config.num_devices, config.optim.batch_size
    if n < 1 or batch < 1 or batch % n:
        raise ValueError(f"config.optim.batch_size={batch} must be a positive multiple of "
                         f"config.num_devices={n}.")
    if config.model.bn_mode not in ("train", "inference", "recalibrate"):
        raise ValueError(f"config.model.bn_mode={config.model.bn_mode!r} is unknown; use "
                         "'train', 'inference' or 'recalibrate'.")
    if config.train.epochs < 1:
        raise ValueError(f"config.train.epochs={config.train.epochs} must be at least 1.")
    if config.train.keep_checkpoints < 1:
        raise ValueError(f"config.train.keep_checkpoints={config.train.keep_checkpoints} would "
                         "delete every checkpoint as soon as it is written; keep at least 1.")
    evaluators.check_schedule(config)
    return network.Network(config, progress=config.train.progress)


class Loop(NamedTuple):
    """What the step loop carries from step to step."""
    config: Any
    run: Any  # Run
    ckpt: Checkpointer
    stop: StopRequest
    log: StepLog
    bar: Any
    per_epoch: int


def run_training(config, workdir, state, run, ckpt, stop: StopRequest) -> Any:
    """The step loop from ``state.step`` to the end; returns the final replicated state.

    Step, log, evaluate what is due, checkpoint. Batches come laid out for the devices
    and already on them (``parallel.prefetch_to_devices``), whichever the loader.
    """
    batch, devices = config.optim.batch_size, parallel.local_count(config.num_devices)
    per_epoch = run.data.train.steps_per_epoch(batch)
    total = config.train.epochs * per_epoch
    step = int(parallel.unreplicate(state.step))
    comm = reducers.communication(config, parallel.unreplicate(state.params))
    bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (config.train.progress and distributed.is_primary()))
    # The log closes its event file however the loop ends (done, an error, a signal).
    with bar, StepLog(workdir, run.schedule, config, step, comm) as log:
        loop = Loop(config, run, ckpt, stop, log, bar, per_epoch)
        stop.start_loop()
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            host = run.data.train.batches(epoch, batch, start_step=offset, devices=devices)
            # closing(): on an error the prefetch thread stops here, not when collected.
            with contextlib.closing(parallel.prefetch_to_devices(
                    host, run.mesh, config.data.prefetch)) as feed:
                for views in feed:
                    state, metrics = run.steps.train(state, views)
                    step += 1
                    log.add(metrics)
                    bar.update(1)
                    _after_step(loop, state, step)
    return state


def _after_step(loop: Loop, state, step: int) -> None:
    """Log, evaluate what is due, checkpoint; raises Preempted on a signal."""
    epoch, end_of_epoch = (step - 1) // loop.per_epoch, step % loop.per_epoch == 0
    if loop.log.due() or end_of_epoch:
        record = loop.log.flush(epoch)
        loop.bar.set_postfix(loss=f"{record['loss']:.3f}", epoch=epoch)
    stopping = loop.stop.should_stop()
    every = loop.config.train.checkpoint_every_steps
    if end_of_epoch:
        metrics = _evaluate_epoch(loop, state, epoch, step)
        loop.ckpt.save(step, state_to_host(state), val_loss=metrics.get("val_loss"))
    elif stopping or (every and step % every == 0):
        loop.log.flush(epoch)
        loop.ckpt.save(step, state_to_host(state))
    if stopping:
        raise Preempted(f"stopped by a signal after step {step}; the checkpoint is saved. "
                        "Run the same command again to resume.", loop.stop.exit_code())


def _evaluate_epoch(loop: Loop, state, epoch: int, step: int) -> Dict[str, float]:
    """The evaluations due after ``epoch``, written to metrics.jsonl and printed."""
    try:
        metrics = loop.run.evals.after_epoch(state, epoch + 1)
    except FloatingPointError as e:
        raise FloatingPointError(f"{e} after step {step}.") from None
    if not metrics:
        return metrics
    loop.log.write({"epoch": epoch, "step": step, **metrics})
    shown = "  ".join(f"{k} {100 * v:.2f}%" if k.endswith("_accuracy") else f"{k} {v:.4f}"
                      for k, v in metrics.items() if isinstance(v, float))
    _say(f"epoch {epoch + 1}/{loop.config.train.epochs}  step {step}  {shown}")
    return metrics


def format_results(results: Dict[str, Any]) -> str:
    """A short table of the 1-NN accuracies that train_and_evaluate returns (each
    identification report among the start and end evaluations)."""
    reports = {k: v for k, v in results.items() if isinstance(v, dict) and "accuracy" in v}
    if not reports:
        return "no identification was declared in config.evals"
    first = reports.get("trained", next(iter(reports.values())))
    lines = [f"1-NN identification on {first['identities']} held-out identities "
             f"({first['gallery']} gallery, {first['probes']} probe images, "
             "no source photo on both sides):"]
    for name in sorted(reports, key=lambda n: (n != "trained", n != "untrained", n)):
        lines.append(f"  {name.replace('_', ' '):<12} {100 * reports[name]['accuracy']:6.2f}%")
    return "\n".join(lines)


def preflight(config, workdir: str) -> None:
    """Everything that can be checked without work, before any data is read."""
    workdir_files.check_workdir(workdir)
    if config.init != "scratch" and not os.path.isdir(os.path.join(config.init, "variables")):
        from bt_jax.weights.pretrained import HOW_TO_FIX

        raise FileNotFoundError(f"config.init={config.init!r}: no converted weights at "
                                f"{os.path.join(config.init, 'variables')}.\n{HOW_TO_FIX}")
    if config.data.source == "folder":
        for key in ("train_dir", "train_extra_dir", "val_dir", "eval_dir"):
            folder_path = config.data[key]
            if folder_path and not os.path.isdir(folder_path):
                raise FileNotFoundError(f"config.data.{key}={folder_path!r} is not a folder; "
                                        "point it at <identity>/<Name>_SSSS_VVVV.jpg images.")


def _resume_check(config, workdir: str) -> None:
    """Stop if ``workdir``'s run had other state-shaping settings; record this config."""
    if Checkpointer.has_checkpoints(workdir):
        run_config.check(config, workdir, action="resume")
    if distributed.is_primary():
        run_config.save(config, workdir)


class Run(NamedTuple):
    """What start-up builds: the devices, data, schedule, compiled steps, a fresh state
    and the evaluations of config.evals."""
    mesh: Any
    data: Data
    schedule: Any
    steps: Steps
    fresh: TrainState
    evals: evaluators.Evals


def set_up(config, workdir: str, net: network.Network) -> Run:
    mesh = parallel.device_mesh(config.num_devices)
    if config.data.source == "synthetic":
        # One process writes the generated images; the others wait, then read them.
        if distributed.is_primary():
            sources.synthetic_dirs(config, workdir)
        distributed.barrier("synthetic_data")
    data = load_data(config, workdir, net)
    tx, schedule = make_optimizer(config, data.train.steps_per_epoch(config.optim.batch_size))
    reducer = reducers.make_reducer(config)
    fresh = initial_state(config, tx, reducer)
    if config.model.bn_mode == "recalibrate":
        fresh = recalibrated(config, fresh, data.train)
    steps = compile_steps(config, tx, reducer)
    return Run(mesh, data, schedule, steps, fresh, evaluators.Evals(config, steps, data))


def _train(config, workdir: str, run: Run, ckpt: Checkpointer, stop: StopRequest):
    """The start evaluations (on the untrained network, also when resuming), the loop,
    the end evaluations: {name: report} of both."""
    restored = ckpt.restore_latest(run.fresh)
    start = run.fresh if restored is None else restored
    _say(f"resuming from step {int(restored.step)} in {workdir}" if restored is not None
         else f"training from step 0 in {workdir}")
    results = run.evals.at("start", state_to_devices(run.fresh, run.mesh))
    for name, report in results.items():
        _say(f"{name} (step 0): 1-NN accuracy {100 * report['accuracy']:.2f}%")
    try:
        state = run_training(config, workdir, state_to_devices(start, run.mesh), run, ckpt,
                             stop)
    except FloatingPointError as e:  # say what is really on disk
        rates = ("config.optim.lr" if config.optim.name == "adamw"
                 else "config.optim.lr_weights, config.optim.lr_biases")
        raise FloatingPointError(f"{e} {ckpt.kept()}. Lower the learning rates ({rates}) "
                                 "or check the data.") from None
    return {**results, **run.evals.at("end", state)}


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
    """Train Barlow Twins (resuming from ``workdir`` when it holds checkpoints), with the
    evaluations of config.evals (by default 1-NN identification of the untrained and the
    trained network and of raw pixels); returns and writes {name: report}."""
    net = check_config(config)
    preflight(config, workdir)
    with StopRequest() as stop:
        distributed.initialize(config)
        with _workdir_lock(workdir):
            _resume_check(config, workdir)
            run = set_up(config, workdir, net)
            ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
            try:
                results = _train(config, workdir, run, ckpt, stop)
            finally:
                ckpt.close()
            if distributed.is_primary():
                with open(workdir_files.path(workdir, workdir_files.RESULTS), "w") as f:
                    json.dump(results, f, indent=2)
    return results


def _workdir_lock(workdir: str):
    """One run per workdir: a second process would resume the first one's checkpoints,
    rewrite its config.json and double its metrics. Taken by process 0 for all."""
    lock = FileLock(workdir_files.path(workdir, workdir_files.LOCK), f"--workdir {workdir}")
    return distributed.held_by_primary(lock.acquire, lambda held: held.release(),
                                       LockedError)


def _say(message: str) -> None:
    if distributed.is_primary():
        tqdm.write(message)
