"""What training reads: the pairs of the train and val splits and the eval identities,
assembled from ``config.data`` and turned into the network's inputs by the ``Network``
(images, or a frozen trunk's cached activations of them).

Val and eval are preloaded because they are small and read every epoch; train follows
``config.data.loader`` (``bt_jax.data.sources.train_pairs``). With
``config.data.holdout_fraction`` the eval identities are a held-out slice of train instead
of eval_dir/val_dir.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import numpy as np

from bt_jax.data import sources
from bt_jax.data.pairs import PairDataset
from bt_jax.network.network import Network


class Data(NamedTuple):
    train: Any  # PairDataset or StreamingPairs (config.data.loader): steps_per_epoch(), batches()
    val: PairDataset
    eval_images: np.ndarray  # uint8 images (the raw-pixel baseline's input)
    eval_records: list
    eval_inputs: np.ndarray  # what the network takes: eval_images or trunk activations


class Split(NamedTuple):
    """A preloaded split: its records, uint8 images and the network's inputs of them."""
    records: list
    images: np.ndarray
    inputs: np.ndarray


def _preloaded(config, source, network: Network, name: str) -> Split:
    records, images = sources.preload(source, config.data.image_size,
                                      progress=config.train.progress)
    return Split(records, images, network.inputs(images, name))


def load_data(config, workdir: str, network: Network) -> Data:
    """Train pairs, val pairs and the eval identities of ``config.data.source``."""
    split = functools.partial(sources.open_split, config, workdir=workdir)
    train_source, val_source = split("train"), split("val")
    holdout = config.data.holdout_fraction
    if holdout:
        train_source, eval_source = sources.hold_out(train_source, holdout, config.seed)
    else:
        eval_source = split("eval")
    val = _preloaded(config, val_source, network, "val")
    evals = (val if eval_source.name == val_source.name
             else _preloaded(config, eval_source, network, "eval"))
    train = sources.train_pairs(config, train_source,
                                transform=network.input_transform("train"))
    _warn_if_constant(train, train_source.name)
    pairs = PairDataset(val.records, val.inputs, seed=config.seed,
                        pair_sampler=config.data.pair_sampler)
    return Data(train, pairs, evals.images, evals.records, evals.inputs)


def _warn_if_constant(train, name: str) -> None:
    """Constant inputs (all-black images) train to nothing without an error; in memory
    they are found before the work (a streamed split relies on the zero-gradient warning
    of the log, which rounding can hide: BatchNorm of a constant is noise, not zero)."""
    inputs = getattr(train, "images", None)
    if inputs is None or len(inputs) == 0:
        return
    flat = inputs.reshape(len(inputs), -1)
    if np.all(flat.max(axis=1) == flat.min(axis=1)):
        warnings.warn(f"{name}: every training input is constant (blank images?): they have no "
                      "variance and nothing can be learned from them; check the data.",
                      stacklevel=2)

