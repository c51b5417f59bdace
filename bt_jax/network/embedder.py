"""Embeddings of a Barlow Twins network: from a checkpoint, converted weights or scratch.

Stand-alone: it reads only ``params`` and ``batch_stats`` of a checkpoint (a partial
restore: no optimizer moments, no per-device PowerSGD buffers) and compiles only the
embedding step of ``bt_jax.network.embedding``, the one the trainer's end-of-run check uses, so
the features are the same: backbone features by default, projector embeddings with
``config.eval.embedding='projector'``, on ``config.num_devices`` devices, every batch
padded to one compiled shape and un-padded. It never imports the trainer.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from bt_jax.network import embedding
from bt_jax.network.network import Network
from bt_jax.runtime import parallel
from bt_jax.runtime import workdir as workdir_files
from bt_jax.runtime.checkpointing import restore_variables


class Weights(NamedTuple):
    """Host {'params', 'batch_stats'} and the training step they come from (None: not a
    checkpoint)."""
    variables: Dict[str, Any]
    step: Optional[int]


def load_weights(config, *, workdir: str | None = None, init: str | None = None) -> Weights:
    """The latest checkpoint of ``workdir``, else the weights of ``init``.

    ``init`` is a converted-weights folder or 'scratch' (random, seeded by config.seed);
    None means config.init. A checkpoint is restored into the structure that ``config``
    describes, so pass the config the run was trained with.
    """
    if workdir is not None and init is not None:
        raise ValueError("pass either a checkpoint workdir or init weights, not both.")
    # Look first, so a mistyped path is found out before building anything.
    if workdir is not None and not os.path.isdir(os.path.join(workdir, workdir_files.CHECKPOINTS)):
        raise FileNotFoundError(f"no checkpoints/ folder in workdir {workdir}; pass the "
                                "--workdir of a training run, or --init for weights.")
    if workdir is None:
        config = copy.deepcopy(config)
        config.init = init if init is not None else config.init
        return Weights(embedding.initial_variables(config), None)
    try:
        variables, step = restore_variables(workdir, embedding.variable_shapes(config))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"the checkpoint in {workdir} does not match the model of this "
                         f"config ({error}); pass the --config the run was trained "
                         "with.") from error
    if variables is None:
        raise FileNotFoundError(f"workdir {workdir} holds no checkpoint yet; train first.")
    return Weights(variables, int(step))


class NetworkEmbedder:
    """Callable uint8 images (N, S, S, 3) -> float32 features (N, D) under pmap."""

    def __init__(self, config, variables: Dict[str, Any], *, progress: bool = True,
                 cache: bool = False):
        # A frozen trunk keeps config.init's weights: the Network runs images through it
        # first, then the trained head. Its activations are cached only with ``cache``:
        # worth it for a folder evaluated again (evaluate.py), not for identify's queries,
        # each a new set of images whose cache file nothing would read or remove.
        self.network = Network(config, progress=progress)
        self.config, self.progress, self.cache = config, progress, cache
        self.embed = embedding.compile_embed(config)
        self.variables = parallel.replicate(variables, parallel.device_mesh(config.num_devices))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from tqdm.auto import tqdm

        size = self.config.data.image_size
        if images.shape[1:] != (size, size, 3):
            raise ValueError(f"images of shape {images.shape[1:]} but the model expects "
                             f"({size}, {size}, 3) (config.data.image_size).")
        inputs = self.network.inputs(images, "evaluation images", cache=self.cache)
        batch = self.config.eval.batch_size
        # One batch per call: compute_embeddings pads only the last, partial one.
        chunks = [embedding.compute_embeddings(self.embed, self.variables,
                                               inputs[i:i + batch], self.config)
                  for i in tqdm(range(0, len(inputs), batch), desc="embedding", unit="batch",
                                disable=not self.progress)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
