"""What the training loop evaluates, as small objects with one interface, and when.

Every evaluator has ``run(state) -> metrics`` (a dict; ``state`` is the replicated
device TrainState). ``config.evals`` declares them by name with a kind and a schedule
(see ``bt_jax.config.evals_config``); ``Evals`` builds them and answers "what is due":
after an epoch, at the start (the untrained network), at the end. The loop reads
"step, log, evaluate what is due, checkpoint".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple

import numpy as np

from bt_jax.runtime import distributed, parallel
from bt_jax.network import embedding
from bt_jax.evaluation.features import raw_pixels
from bt_jax.evaluation.identification import identification_report
from bt_jax.data.pairs import device_layout

SCHEDULE_POINTS = ("", "start", "end")


class Identification:
    """1-NN identification of the eval identities (first-source protocol) with the network."""

    def __init__(self, embed: Callable, inputs: np.ndarray, records: list, config):
        self.embed, self.inputs, self.records, self.config = embed, inputs, records, config

    def run(self, state) -> Dict[str, Any]:
        def features(inputs):
            return embedding.compute_embeddings(
                self.embed, embedding.network_variables(state), inputs, self.config)
        return identification_report(features, self.inputs, self.records,
                                                self.config.eval.metric)


class RawPixels:
    """The same 1-NN on raw pixels: the floor a network must beat. Ignores ``state``."""

    def __init__(self, images: np.ndarray, records: list, metric: str):
        self.images, self.records, self.metric = images, records, metric

    def run(self, state) -> Dict[str, Any]:
        del state
        return identification_report(raw_pixels, self.images,
                                                self.records, self.metric)


class ValidationLoss:
    """Mean Barlow Twins loss over fixed val pairs (BN in inference mode), weighted by real
    examples: every pair counts once, the padding of the last batch not at all."""

    def __init__(self, eval_step: Callable, val, config):
        self.eval_step, self.config = eval_step, config
        pairs = val.epoch_pairs(0)
        self.views = (val.images[pairs[:, 0]], val.images[pairs[:, 1]])

    def run(self, state) -> Dict[str, float]:
        n = parallel.local_count(self.config.num_devices)
        rows = distributed.process_rows
        total, count = 0.0, 0.0
        for (v1, v2), mask in embedding.padded_batches(self.views, self.config.eval.batch_size):
            views = device_layout(np.stack([rows(v1), rows(v2)], axis=1), n)
            loss, real = self.eval_step(state, views, parallel.shard(rows(mask), n))
            real = float(parallel.local_values(real)[0])
            total += float(parallel.local_values(loss)[0]) * real
            count += real
        loss = total / count
        if not math.isfinite(loss):
            raise FloatingPointError(f"validation loss is {loss}")
        return {"loss": loss}


class Scheduled(NamedTuple):
    name: str
    evaluator: Any
    every_epochs: int
    at: str


def check_schedule(config) -> None:
    """Fail before any work on an entry of config.evals that cannot run."""
    for name, entry in config.evals.items():
        where = f"config.evals.{name}"
        if entry.kind not in ("identification", "val_loss", "raw_pixels"):
            raise ValueError(f"{where}.kind={entry.kind!r} is unknown; use 'identification', "
                             "'val_loss' or 'raw_pixels'.")
        if entry.at not in SCHEDULE_POINTS or entry.every_epochs < 0:
            raise ValueError(f"{where}: at={entry.at!r} must be '', 'start' or 'end' and "
                             f"every_epochs={entry.every_epochs} at least 0.")
        if entry.at and entry.every_epochs:
            raise ValueError(f"{where} sets both at={entry.at!r} and every_epochs="
                             f"{entry.every_epochs}; declare two entries instead.")


class Evals:
    """The evaluations of ``config.evals``, built over the run's data and compiled steps."""

    def __init__(self, config, steps, data):
        check_schedule(config)
        self.items: List[Scheduled] = []
        for name, entry in config.evals.items():
            evaluator = _build(entry.kind, config, steps, data)
            self.items.append(Scheduled(name, evaluator, entry.every_epochs, entry.at))

    def after_epoch(self, state, epochs_done: int) -> Dict[str, float]:
        """Scalar metrics of the evaluations due after ``epochs_done`` epochs, flattened
        to ``<name>_<metric>`` (e.g. ``val_loss``, ``knn_accuracy``)."""
        metrics = {}
        for item in self.items:
            if item.every_epochs and epochs_done % item.every_epochs == 0:
                out = item.evaluator.run(state)
                metrics.update({f"{item.name}_{k}": v for k, v in out.items()
                                if isinstance(v, (int, float))})
        return metrics

    def at(self, point: str, state) -> Dict[str, Dict[str, Any]]:
        """{name: full report} of the evaluations declared at ``point`` ('start'/'end')."""
        return {item.name: item.evaluator.run(state) for item in self.items
                if item.at == point}


def _build(kind: str, config, steps, data):
    if kind == "identification":
        return Identification(steps.embed, data.eval_inputs, data.eval_records, config)
    if kind == "val_loss":
        return ValidationLoss(steps.eval, data.val, config)
    return RawPixels(data.eval_images, data.eval_records, config.eval.metric)
