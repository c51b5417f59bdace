"""Barlow Twins training under ``jax.pmap``: the per-device steps and the host loop.

The per-device functions (``train_step``, ``eval_step``, and ``embedding.embed_step``)
are pure and talk to other devices only over ``AXIS``; ``compile_steps`` applies
``pmap`` to them in one place. ``train_and_evaluate`` is the host loop that the scripts
call.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
import warnings
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bt_jax.runtime import distributed, parallel, run_config
from bt_jax.network import embedding, trunk
from bt_jax.train import evaluators, optim, reducers
from bt_jax.data import preprocess
from bt_jax.runtime.checkpointing import Checkpointer
from bt_jax.data import augment, sources
from bt_jax.data.pairs import PairDataset
from bt_jax.train.losses import barlow_twins_loss
from bt_jax.models import inception_resnet
from bt_jax.models.resnet import BN_EPSILON
from bt_jax.runtime.parallel import AXIS
from bt_jax.train.state import TrainState

# ----------------------------------------------------------------------------------------
# Per-device steps: pure functions of their arguments, collectives only over AXIS.


def _views(state, views, config):
    if trunk.is_frozen(config):  # image augmentation belongs to the trunk's input
        return tuple(embedding.network_input(v, config) for v in views)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
    k1, k2 = jax.random.split(rng)
    norm = config.data.normalization
    # view=1 is the second image of a pair: the one a synthetic mask may be drawn on.
    x1 = preprocess.normalize(augment.augment(k1, views[0], config.augment, view=0), norm)
    x2 = preprocess.normalize(augment.augment(k2, views[1], config.augment, view=1), norm)
    return x1, x2


def train_step(state: TrainState, views, *, model, tx, reducer, config):
    """One Barlow Twins step on this device's slice ``views`` (2, b, H, W, 3) uint8."""
    x1, x2 = _views(state, views, config)

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


# ----------------------------------------------------------------------------------------
# Host side: set-up, the loop, logging, checkpoints and the final evaluation.


def make_optimizer(config, steps_per_epoch: int):
    """LARS (the reference, rates scaled by global_batch / 256) or AdamW (config.optim.lr),
    with the warm-up/cosine schedule."""
    o = config.optim
    if o.name not in ("lars", "adamw"):
        raise ValueError(f"config.optim.name={o.name!r} is unknown; use 'lars' or 'adamw'.")
    schedule = optim.warmup_cosine_schedule(
        base_lr=o.batch_size / 256 if o.name == "lars" else 1.0,
        warmup_steps=o.warmup_epochs * steps_per_epoch,
        total_steps=config.train.epochs * steps_per_epoch, end_factor=o.end_factor)
    if o.name == "adamw":
        return optim.adamw(schedule, lr=o.lr, weight_decay=o.weight_decay,
                           backbone_lr_scale=o.backbone_lr_scale), schedule
    tx = optim.lars(schedule, lr_weights=o.lr_weights, lr_biases=o.lr_biases,
                    weight_decay=o.weight_decay, eta=o.eta, momentum=o.momentum,
                    backbone_lr_scale=o.backbone_lr_scale)
    return tx, schedule


def group_rates(config):
    """(weights, biases) rates that the schedule multiplies, for the log."""
    o = config.optim
    return (o.lr, o.lr) if o.name == "adamw" else (o.lr_weights, o.lr_biases)


def initial_state(config, tx, reducer) -> TrainState:
    """A fresh host-side TrainState, from converted weights unless init is 'scratch'."""
    variables = embedding.initial_variables(config)
    params = variables["params"]
    return TrainState(step=np.zeros((), np.int32), params=params,
                      batch_stats=variables["batch_stats"],
                      opt_state=jax.tree.map(np.asarray, tx.init(params)),
                      reducer_state=_per_device(reducer.init(params), config.num_devices),
                      rng=np.asarray(jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)))


# Inputs that set the running statistics of config.model.bn_mode='recalibrate'.
RECALIBRATION_INPUTS = 1024


def recalibrated(config, state: TrainState, data: Data) -> TrainState:
    """``state`` with the backbone's BatchNorm recalibrated on training inputs (a fixed
    seeded sample, so a resumed run recomputes the same values)."""
    inputs = getattr(data.train, "images", None)
    if inputs is None:
        raise ValueError("config.model.bn_mode='recalibrate' needs the training inputs in "
                         "memory: set config.data.loader='preload' or freeze a trunk.")
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.permutation(len(inputs))[:RECALIBRATION_INPUTS])
    x = embedding.network_input(jnp.asarray(inputs[pick]), config)
    eps = inception_resnet.BN_EPSILON if config.model.arch in trunk.INCEPTION_ARCHS else BN_EPSILON
    params, batch_stats = trunk.recalibrate_batchnorm(
        embedding.create_model(config), state.params, state.batch_stats, x, eps)
    return state.replace(params=params, batch_stats=batch_stats)


def _per_device(tree, num_devices: int):
    """Stack one host copy per device: reducer state may differ between devices."""
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_devices), tree)


def state_to_devices(state: TrainState, mesh) -> TrainState:
    """Host state -> device state: replicated, except the per-device reducer state."""
    on_devices = parallel.replicate(state.replace(reducer_state=()), mesh)
    return on_devices.replace(reducer_state=parallel.distribute(state.reducer_state, mesh))


def state_to_host(state: TrainState) -> TrainState:
    """Device state -> host state for checkpoints, keeping every device's reducer state
    (PowerSGD's error feedback differs per device; resuming must restore each one)."""
    host = parallel.unreplicate(state.replace(reducer_state=()))
    gathered = jax.tree.map(lambda x: distributed.gather_rows(parallel.local_values(x)),
                            state.reducer_state)
    return host.replace(reducer_state=gathered)


def check_config(config) -> None:
    """Fail before any work on settings that cannot run."""
    n, batch = config.num_devices, config.optim.batch_size
    if n < 1 or batch < 1 or batch % n:
        raise ValueError(f"config.optim.batch_size={batch} must be a positive multiple of "
                         f"config.num_devices={n}.")
    if config.eval.batch_size % n:
        raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple "
                         f"of config.num_devices={n}.")
    if config.model.bn_mode not in ("train", "inference", "recalibrate"):
        raise ValueError(f"config.model.bn_mode={config.model.bn_mode!r} is unknown; use "
                         "'train', 'inference' or 'recalibrate'.")
    if config.train.epochs < 1:
        raise ValueError(f"config.train.epochs={config.train.epochs} must be at least 1.")
    if config.train.keep_checkpoints < 1:
        raise ValueError(f"config.train.keep_checkpoints={config.train.keep_checkpoints} would "
                         "delete every checkpoint as soon as it is written; keep at least 1.")
    preprocess.check_normalization(config.data.normalization)
    trunk.check_split(config)
    evaluators.check_schedule(config)


class Data(NamedTuple):
    train: Any  # PairDataset or StreamingPairs (config.data.loader): steps_per_epoch(), batches()
    val: PairDataset
    eval_images: np.ndarray  # uint8 images (the raw-pixel baseline's input)
    eval_records: list
    eval_inputs: np.ndarray  # what the network takes: eval_images or trunk activations


def load_data(config, workdir: str) -> Data:
    """Pairs and images of ``config.data.source``; val and eval are preloaded because they
    are small and read every epoch, train follows ``config.data.loader``. With
    config.data.holdout_fraction the eval identities are a held-out slice of train instead
    of eval_dir/val_dir. With a frozen trunk every split becomes its cached activations."""
    size, progress = config.data.image_size, config.train.progress
    split = functools.partial(sources.open_split, config, workdir=workdir)
    train_source, val_source = split("train"), split("val")
    holdout = config.data.holdout_fraction
    eval_source = None if holdout else split("eval")
    val = sources.preload(val_source, size, progress=progress)
    if trunk.is_frozen(config):
        same = eval_source is not None and eval_source.name == val_source.name
        return _frozen_data(config, train_source, val, None if same else eval_source)
    if holdout:
        train_source, eval_source = sources.hold_out(train_source, holdout, config.seed)
    evals = (val if eval_source.name == val_source.name
             else sources.preload(eval_source, size, progress=progress))
    pairs = PairDataset(*val, seed=config.seed, pair_sampler=config.data.pair_sampler)
    return Data(sources.train_pairs(config, train_source), pairs, evals[1], evals[0], evals[1])


def _frozen_data(config, train_source, val, eval_source) -> Data:
    """Data whose network inputs are the frozen trunk's cached activations. The cache is
    per whole split, so a held-out slice of train reuses the train cache. ``eval_source``
    None: the eval identities are val's (or, with a hold-out, train's)."""
    size, progress, sampler = config.data.image_size, config.train.progress, config.data.pair_sampler
    frozen = trunk.Trunk(config, progress=progress)
    records, images = sources.preload(train_source, size, progress=progress)
    acts = frozen.activations(images, "train")[0]
    val_acts = frozen.activations(val[1], "val")[0]
    if config.data.holdout_fraction:
        keep, held = sources.holdout_indices(records, config.data.holdout_fraction, config.seed)
        evals = (sources.relabel([records[i] for i in held]), images[held], acts[held])
        records, acts = sources.relabel([records[i] for i in keep]), acts[keep]
    elif eval_source is None:
        evals = (val[0], val[1], val_acts)
    else:
        eval_records, eval_images = sources.preload(eval_source, size, progress=progress)
        evals = (eval_records, eval_images, frozen.activations(eval_images, "eval")[0])
    del images
    train = PairDataset(records, acts, seed=config.seed, pair_sampler=sampler)
    pairs = PairDataset(val[0], val_acts, seed=config.seed, pair_sampler=sampler)
    return Data(train, pairs, evals[1], evals[0], evals[2])


class MetricsWriter:
    """JSON-lines metrics on the host; device values are pulled only when written."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")

    def write(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _to_python(v) for k, v in record.items()}) + "\n")


def _to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


# Exit status after a SIGTERM/SIGUSR1 stop with a saved checkpoint: EX_TEMPFAIL, "try
# again". Requeue scripts rerun the same command, which resumes from that checkpoint.
PREEMPTED_EXIT_CODE = 75
# After Ctrl-C (SIGINT): 128 + 2, as shells report it. Not 75: a person who pressed
# Ctrl-C wants to stop, and requeue wrappers would run 75 again.
INTERRUPTED_EXIT_CODE = 130


def _exit_code(signum: int) -> int:
    return INTERRUPTED_EXIT_CODE if signum == signal.SIGINT else PREEMPTED_EXIT_CODE


class Preempted(Exception):
    """Training stopped on a signal (after saving a checkpoint, once steps have run)."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Turns SIGTERM/SIGUSR1/SIGINT into a flag that the loop reads between steps.

    Before the loop starts there is nothing to save, so a signal stops at once. In the
    loop the first signal finishes the step and saves; a second Ctrl-C aborts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __enter__(self):
        self.requested, self.looping, self._previous = None, False, {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @staticmethod
    def _start_up_stop(signum) -> Preempted:
        return Preempted(f"stopped by signal {signum} during start-up, before any training "
                         "step; nothing to save. Run the same command to start again.",
                         _exit_code(signum))

    def _handle(self, signum, frame):
        del frame
        if not self.looping:
            # Raised from a handler, the exception lands wherever Python was; inside a gc
            # callback or __del__ it is printed and dropped, so start_loop checks again.
            self.requested = signum
            raise self._start_up_stop(signum)
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.requested is None:
            self.requested = signum
            again = " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""
            tqdm.write(f"received signal {signum}: finishing this step, then saving{again}")

    def start_loop(self) -> None:
        """Enter the training loop, unless a signal already asked to stop during start-up."""
        if self.requested is not None:
            raise self._start_up_stop(self.requested)
        self.looping = True

    def should_stop(self) -> bool:
        # Every process must stop at the same step, or the others hang in a collective.
        return distributed.any_process(self.requested is not None)

    def exit_code(self) -> int:
        return _exit_code(self.requested if self.requested is not None else signal.SIGTERM)


class StepLog:
    """Buffers device metrics and pulls them to the host only when a record is written.

    Every flush also checks the buffered steps for NaN/Inf, so nothing is saved after a
    divergence and the error names the first bad step.
    """

    def __init__(self, workdir: str, schedule, config, step: int, comm=None):
        self.writer = MetricsWriter(workdir) if distributed.is_primary() else None
        self.schedule, self.config = schedule, config
        self.comm = comm  # (exact floats, floats sent, first compressed step) or None
        self.history, self.first = [], step
        self.start = self.tick = time.time()
        self.warned_zero = False

    def add(self, metrics) -> None:
        self.history.append(metrics)

    def due(self) -> bool:
        return len(self.history) >= self.config.train.log_every_steps

    def flush(self, epoch: int) -> Optional[Dict[str, Any]]:
        if not self.history:
            return None
        host = [{k: float(parallel.local_values(v)[0]) for k, v in m.items()} for m in self.history]
        for offset, values in enumerate(host):
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(
                    f"training diverged at step {self.first + offset + 1}: {values}.")
        self._warn_if_no_signal(host)
        record = self._record(epoch, host)
        self.history, self.first, self.tick = [], record["step"], time.time()
        self.write(record)
        return record

    def _warn_if_no_signal(self, host) -> None:
        """Constant inputs (all-black images) train to nothing without an error: say so
        at the first log interval whose gradients are all exactly zero."""
        if self.warned_zero or any(h["grad_norm"] != 0.0 for h in host):
            return
        self.warned_zero = True
        warnings.warn(f"the gradient is exactly zero at steps {self.first + 1}-"
                      f"{self.first + len(host)}: nothing is being learned. The inputs may have "
                      "no variance (blank or constant images?) or every trained layer is "
                      "frozen; check the data and config.optim.backbone_lr_scale.", stacklevel=2)

    def _record(self, epoch, host) -> Dict[str, Any]:
        o, step = self.config.optim, self.first + len(host)
        lr_weights, lr_biases = group_rates(self.config)
        rates = optim.group_learning_rates(self.schedule, step - 1, lr_weights=lr_weights,
                                           lr_biases=lr_biases)
        elapsed = max(time.time() - self.tick, 1e-9)
        return {"epoch": epoch, "step": step, **rates,
                "loss": float(np.mean([h["loss"] for h in host])),
                "grad_norm": float(np.mean([h["grad_norm"] for h in host])),
                "images_per_s": 2 * o.batch_size * len(host) / elapsed,
                "wall_time": time.time() - self.start, **self._communication(step)}

    def _communication(self, step: int) -> Dict[str, Any]:
        if self.comm is None:
            return {}
        exact, compressed, start = self.comm
        sent = compressed if step > start else exact
        return {"floats_exact": exact, "floats_sent": sent, "compression_ratio": exact / sent}

    def write(self, record: Dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(record)


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
    log = StepLog(workdir, run.schedule, config, step, comm)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (config.train.progress and distributed.is_primary()))
    loop = Loop(config, run, ckpt, stop, log, bar, per_epoch)
    stop.start_loop()
    with bar:
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


def check_workdir(workdir: str, flag: str = "--workdir") -> str:
    """``workdir`` created if needed, or a clear error for an empty path or a file."""
    if not workdir:
        raise ValueError(f"{flag} is empty; name a folder for checkpoints and results.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {workdir!r} is a file or lies under a file; name a "
                         "folder.") from None
    return workdir


def preflight(config, workdir: str) -> None:
    """Everything that can be checked without work, before any data is read."""
    check_workdir(workdir)
    if config.init != "scratch" and not os.path.isdir(os.path.join(config.init, "variables")):
        from bt_jax.weights.pretrained import HOW_TO_FIX

        raise FileNotFoundError(f"config.init={config.init!r}: no converted weights at "
                                f"{os.path.join(config.init, 'variables')}.\n{HOW_TO_FIX}")
    if config.data.source == "folder":
        for key in ("train_dir", "val_dir", "eval_dir"):
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


def set_up(config, workdir: str) -> Run:
    mesh = parallel.device_mesh(config.num_devices)
    if config.data.source == "synthetic":
        # One process writes the generated images; the others wait, then read them.
        if distributed.is_primary():
            sources.synthetic_dirs(config, workdir)
        distributed.barrier("synthetic_data")
    data = load_data(config, workdir)
    tx, schedule = make_optimizer(config, data.train.steps_per_epoch(config.optim.batch_size))
    reducer = reducers.make_reducer(config)
    fresh = initial_state(config, tx, reducer)
    if config.model.bn_mode == "recalibrate":
        fresh = recalibrated(config, fresh, data)
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
    check_config(config)
    preflight(config, workdir)
    with StopRequest() as stop:
        distributed.initialize(config)
        _resume_check(config, workdir)
        run = set_up(config, workdir)
        ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
        try:
            results = _train(config, workdir, run, ckpt, stop)
        finally:
            ckpt.close()
    if distributed.is_primary():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def _say(message: str) -> None:
    if distributed.is_primary():
        tqdm.write(message)
