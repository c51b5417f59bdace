"""Barlow Twins training under ``jax.pmap``: the per-device step and the host loop.

The per-device functions (``train_step``, ``eval_step``, ``embed_step``) are pure and
talk to other devices only over ``AXIS``; ``compile_steps`` applies ``pmap`` to them in
one place. ``train_and_evaluate`` is the host loop that the scripts call.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bt_jax import evaluation, optim, parallel, preprocess, reducers
from bt_jax.checkpointing import Checkpointer
from bt_jax.data import folder, sources
from bt_jax.losses import barlow_twins_loss
from bt_jax.models import BarlowTwins, Projector, parse_projector_sizes, resnet50, tiny_resnet
from bt_jax.parallel import AXIS
from bt_jax.pretrained import load_pretrained
from bt_jax.train_state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ARCHS = {"resnet50": resnet50, "tiny": tiny_resnet}


def create_model(config, axis_name=None) -> BarlowTwins:
    """The Barlow Twins model of ``config.model``; ``axis_name`` syncs its BatchNorm."""
    m = config.model
    if m.arch not in ARCHS or m.dtype not in DTYPES:
        raise ValueError(f"config.model.arch={m.arch!r} / dtype={m.dtype!r}: arch must be one "
                         f"of {sorted(ARCHS)} and dtype one of {sorted(DTYPES)}.")
    dtype = DTYPES[m.dtype]
    backbone = ARCHS[m.arch](pool_window=m.pool_window, dtype=dtype, axis_name=axis_name)
    projector = Projector(parse_projector_sizes(m.projector), dtype=dtype, axis_name=axis_name)
    return BarlowTwins(backbone, projector)


# ----------------------------------------------------------------------------------------
# Per-device steps: pure functions of their arguments, collectives only over AXIS.


def _views(state, views, config):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
    k1, k2 = jax.random.split(rng)
    norm = config.data.normalization
    x1 = preprocess.normalize(preprocess.augment(k1, views[0], config.augment), norm)
    x2 = preprocess.normalize(preprocess.augment(k2, views[1], config.augment), norm)
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
    grads, reducer_state = reducer.update(grads, state.reducer_state, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state,
                          reducer_state=reducer_state)
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(state: TrainState, views, mask, *, model, config):
    """Validation loss on a padded slice: BN in inference mode, padding masked out."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    norm = config.data.normalization
    z1, z2 = model.apply(variables, preprocess.normalize(views[0], norm),
                         preprocess.normalize(views[1], norm), train=False)
    loss = barlow_twins_loss(z1, z2, lambd=config.loss.lambd, axis_name=AXIS, mask=mask)
    return loss, jax.lax.psum(jnp.sum(mask), AXIS)


def embed_step(state: TrainState, images, *, model, config):
    """Backbone features or projector embeddings of a slice of uint8 images."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = preprocess.normalize(images, config.data.normalization)
    method = BarlowTwins.embed if config.eval.embedding == "projector" else BarlowTwins.features
    return model.apply(variables, x, train=False, method=method).astype(jnp.float32)


class Steps(NamedTuple):
    train: Any
    eval: Any
    embed: Any


def compile_steps(config, tx, reducer) -> Steps:
    """pmap the per-device steps over AXIS; the train step donates its state."""
    model = create_model(config, axis_name=AXIS)
    train = functools.partial(train_step, model=model, tx=tx, reducer=reducer, config=config)
    evals = functools.partial(eval_step, model=model, config=config)
    embed = functools.partial(embed_step, model=model, config=config)
    return Steps(jax.pmap(train, axis_name=AXIS, donate_argnums=(0,)),
                 jax.pmap(evals, axis_name=AXIS), jax.pmap(embed, axis_name=AXIS))


# ----------------------------------------------------------------------------------------
# Host side: set-up, the loop, logging, checkpoints and the final evaluation.


def make_optimizer(config, steps_per_epoch: int):
    """Reference LARS with the warm-up/cosine schedule scaled by global_batch / 256."""
    o = config.optim
    schedule = optim.warmup_cosine_schedule(
        base_lr=o.batch_size / 256, warmup_steps=o.warmup_epochs * steps_per_epoch,
        total_steps=config.train.epochs * steps_per_epoch, end_factor=o.end_factor)
    tx = optim.lars(schedule, lr_weights=o.lr_weights, lr_biases=o.lr_biases,
                    weight_decay=o.weight_decay, eta=o.eta, momentum=o.momentum,
                    backbone_lr_scale=o.backbone_lr_scale)
    return tx, schedule


def initial_state(config, tx, reducer) -> TrainState:
    """A fresh host-side TrainState, from converted weights unless init is 'scratch'."""
    rng = jax.random.PRNGKey(config.seed)
    size = config.data.image_size
    dummy = np.zeros((2, size, size, 3), np.float32)
    variables = jax.jit(functools.partial(create_model(config).init, train=False))(
        jax.random.fold_in(rng, 1), dummy, dummy)
    params, batch_stats = variables["params"], variables["batch_stats"]
    if config.init != "scratch":
        params, batch_stats = load_pretrained(config.init, params, batch_stats)
    params = jax.tree.map(np.asarray, params)
    return TrainState(step=np.zeros((), np.int32), params=params,
                      batch_stats=jax.tree.map(np.asarray, batch_stats),
                      opt_state=jax.tree.map(np.asarray, tx.init(params)),
                      reducer_state=jax.tree.map(np.asarray, reducer.init(params)),
                      rng=np.asarray(jax.random.fold_in(rng, 2)))


def check_config(config) -> None:
    """Fail before any work on settings that cannot run."""
    n, batch = config.num_devices, config.optim.batch_size
    if n < 1 or batch < 1 or batch % n:
        raise ValueError(f"config.optim.batch_size={batch} must be a positive multiple of "
                         f"config.num_devices={n}.")
    if config.eval.batch_size % n:
        raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple "
                         f"of config.num_devices={n}.")
    if config.train.epochs < 1:
        raise ValueError(f"config.train.epochs={config.train.epochs} must be at least 1.")
    preprocess.check_normalization(config.data.normalization)


class Data(NamedTuple):
    train: folder.PairDataset
    val: folder.PairDataset
    eval_images: np.ndarray
    eval_records: list


def load_data(config, workdir: str) -> Data:
    dirs = sources.data_dirs(config, workdir)
    size, progress = config.data.image_size, config.train.progress
    loaded = {}
    for split in ("train", "val", "eval"):
        records = folder.scan_folder(
            dirs[split], min_images_per_identity=config.data.min_images_per_identity)
        loaded[split] = (records, folder.load_images(records, size, progress=progress))
    pairs = functools.partial(folder.PairDataset, seed=config.seed,
                              pairs_per_identity=config.data.pair_sampler)
    return Data(pairs(*loaded["train"]), pairs(*loaded["val"]), loaded["eval"][1],
                loaded["eval"][0])


def _padded_batches(arrays, batch_size: int):
    """Yield (chunk, mask) with every chunk padded to ``batch_size``: nothing is dropped."""
    total = len(arrays[0]) if isinstance(arrays, tuple) else len(arrays)
    for start in range(0, total, batch_size):
        def pad(a):
            part = a[start:start + batch_size]
            return np.concatenate([part, np.zeros((batch_size - len(part),) + part.shape[1:],
                                                  part.dtype)])
        chunk = tuple(pad(a) for a in arrays) if isinstance(arrays, tuple) else pad(arrays)
        mask = (np.arange(batch_size) < total - start).astype(np.float32)
        yield chunk, mask


def shard_views(view1: np.ndarray, view2: np.ndarray, num_devices: int) -> np.ndarray:
    """Two (B, H, W, 3) views -> (devices, 2, B / devices, H, W, 3)."""
    return np.swapaxes(parallel.shard(np.stack([view1, view2], axis=1), num_devices), 1, 2)


def compute_embeddings(steps: Steps, state, images: np.ndarray, config) -> np.ndarray:
    """Embeddings of all ``images``, padded to one compiled batch shape and un-padded."""
    n, out = config.num_devices, []
    for chunk, mask in _padded_batches(images, config.eval.batch_size):
        emb = np.asarray(steps.embed(state, parallel.shard(chunk, n)))
        out.append(emb.reshape(-1, emb.shape[-1])[mask > 0])
    return np.concatenate(out)


def validation_loss(steps: Steps, state, val: folder.PairDataset, config) -> float:
    """Mean Barlow Twins loss over fixed validation pairs, weighted by real examples."""
    pairs = val.epoch_pairs(0)
    views = (val.images[pairs[:, 0]], val.images[pairs[:, 1]])
    total, count = 0.0, 0.0
    for (v1, v2), mask in _padded_batches(views, config.eval.batch_size):
        loss, n = steps.eval(state, shard_views(v1, v2, config.num_devices),
                             parallel.shard(mask, config.num_devices))
        n_real = float(np.asarray(n)[0])
        total += float(np.asarray(loss)[0]) * n_real
        count += n_real
    return total / count


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


def _check_finite(history, first_step: int) -> None:
    """Raise naming the first step whose loss or gradient norm was NaN/Inf."""
    for offset, metrics in enumerate(history):
        values = {k: float(np.asarray(v)[0]) for k, v in metrics.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"training diverged at step {first_step + offset}: {values}. The last good "
                "checkpoint is kept; lower the learning rate (config.optim.lr_weights) or "
                "check the data.")


def _log(writer, history, first_step, schedule, config, epoch, timer):
    """Pull the buffered device metrics to the host and write one averaged record."""
    _check_finite(history, first_step)
    step = first_step + len(history)
    elapsed = time.time() - timer["t"]
    record = {"epoch": epoch, "step": step,
              **optim.group_learning_rates(schedule, step - 1, lr_weights=config.optim.lr_weights,
                                           lr_biases=config.optim.lr_biases),
              "loss": float(np.mean([np.asarray(m["loss"])[0] for m in history])),
              "images_per_s": 2 * config.optim.batch_size * len(history) / max(elapsed, 1e-9),
              "wall_time": time.time() - timer["start"]}
    writer.write(record)
    timer["t"] = time.time()
    return record


def run_training(config, workdir, state, steps: Steps, data: Data, schedule, ckpt) -> Any:
    """The step loop from ``state.step`` to the end; returns the final replicated state."""
    n, batch = config.num_devices, config.optim.batch_size
    per_epoch = data.train.steps_per_epoch(batch)
    total = config.train.epochs * per_epoch
    writer, timer = MetricsWriter(workdir), {"t": time.time(), "start": time.time()}
    step = int(parallel.unreplicate(state.step))
    history, first = [], step
    bar = tqdm(total=total, initial=step, desc="train", unit="step",
               disable=not config.train.progress, dynamic_ncols=True)
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        for view1, view2 in data.train.batches(epoch, batch, start_step=offset):
            state, metrics = steps.train(state, shard_views(view1, view2, n))
            history.append(metrics)
            step += 1
            bar.update(1)
            end_of_epoch = step % per_epoch == 0
            if len(history) >= config.train.log_every_steps or end_of_epoch:
                record = _log(writer, history, first, schedule, config, epoch, timer)
                bar.set_postfix(loss=f"{record['loss']:.3f}", epoch=epoch)
                history, first = [], step
            every = config.train.checkpoint_every_steps
            if end_of_epoch:
                _end_epoch(config, state, steps, data, ckpt, writer, epoch, step)
            elif every and step % every == 0:
                ckpt.save(step, parallel.unreplicate(state))
    bar.close()
    return state


def _end_epoch(config, state, steps, data, ckpt, writer, epoch, step) -> None:
    val_loss = validation_loss(steps, state, data.val, config)
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"validation loss is {val_loss} after step {step}; the last "
                                 "good checkpoint is kept.")
    writer.write({"epoch": epoch, "step": step, "val_loss": val_loss})
    ckpt.save(step, parallel.unreplicate(state), val_loss=val_loss)
    tqdm.write(f"epoch {epoch + 1}/{config.train.epochs}  step {step}  val_loss {val_loss:.4f}")


def _identification(config, steps, state, data) -> Dict[str, float]:
    embed = functools.partial(compute_embeddings, steps, state, config=config)
    return evaluation.identification_report(embed, data.eval_images, data.eval_records,
                                            config.eval.metric)


def format_results(results: Dict[str, Any]) -> str:
    """A short table of the 1-NN accuracies that train_and_evaluate returns."""
    first = results["trained"]
    lines = [f"1-NN identification on {first['identities']} held-out identities "
             f"({first['gallery']} gallery, {first['probes']} probe images, "
             "no source photo on both sides):"]
    for name in ("trained", "untrained", "raw_pixels"):
        lines.append(f"  {name.replace('_', ' '):<12} {100 * results[name]['accuracy']:6.2f}%")
    return "\n".join(lines)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
    """Train Barlow Twins (resuming from ``workdir`` when it holds checkpoints), then
    report 1-NN identification for the trained network, the untrained one and raw pixels."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.device_mesh(config.num_devices)
    data = load_data(config, workdir)
    tx, schedule = make_optimizer(config, data.train.steps_per_epoch(config.optim.batch_size))
    reducer = reducers.make_reducer(config)
    steps = compile_steps(config, tx, reducer)
    fresh = initial_state(config, tx, reducer)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    try:
        restored = ckpt.restore_latest(fresh)
        if restored is not None:
            tqdm.write(f"resuming from step {int(restored.step)} in {workdir}")
        untrained = _identification(config, steps, parallel.replicate(fresh, mesh), data)
        tqdm.write(f"untrained network: 1-NN accuracy {100 * untrained['accuracy']:.2f}%")
        state = run_training(config, workdir, parallel.replicate(fresh if restored is None else restored, mesh),
                             steps, data, schedule, ckpt)
        trained = _identification(config, steps, state, data)
    finally:
        ckpt.close()
    raw = evaluation.identification_report(evaluation.raw_pixels, data.eval_images,
                                           data.eval_records, config.eval.metric)
    results = {"trained": trained, "untrained": untrained, "raw_pixels": raw}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
