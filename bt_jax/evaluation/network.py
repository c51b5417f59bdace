"""Embeddings of a Barlow Twins network: from a checkpoint, converted weights or scratch.

The per-device embedding step is train.py's own (``compile_steps(...).embed``), so the
evaluated features are exactly those the end-of-training check sees: backbone features
by default, projector embeddings with ``config.eval.embedding='projector'``, on
``config.num_devices`` devices, every batch padded to one compiled shape and un-padded.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from bt_jax import parallel, reducers, train
from bt_jax.checkpointing import Checkpointer


def load_state(config, *, workdir: str | None = None, init: str | None = None):
    """Host TrainState: the latest checkpoint of ``workdir``, else weights per ``init``.

    ``init`` is a converted-weights folder or 'scratch' (random, seeded by config.seed);
    None means config.init. A checkpoint is restored into the structure that ``config``
    describes, so pass the config the run was trained with.
    """
    if workdir is not None and init is not None:
        raise ValueError("pass either a checkpoint workdir or init weights, not both.")
    # Checkpointer creates its folders: look first, so a mistyped path is neither
    # turned into an empty run directory nor found out after building the model.
    if workdir is not None and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints/ folder in workdir {workdir}; pass the "
                                "--workdir of a training run, or --init for weights.")
    config = copy.deepcopy(config)
    if workdir is not None or init is not None:
        config.init = "scratch" if workdir is not None else init
    tx, _ = train.make_optimizer(config, steps_per_epoch=1)
    fresh = train.initial_state(config, tx, reducers.make_reducer(config))
    return fresh if workdir is None else _restore(workdir, fresh)


def _restore(workdir: str, template):
    ckpt = Checkpointer(workdir)
    try:
        state = ckpt.restore_latest(template)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"the checkpoint in {workdir} does not match the model of this "
                         f"config ({error}); pass the --config the run was trained "
                         "with.") from error
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"workdir {workdir} holds no checkpoint yet; train first.")
    return state


class NetworkEmbedder:
    """Callable uint8 images (N, S, S, 3) -> float32 features (N, D) under pmap."""

    def __init__(self, config, state, *, progress: bool = True):
        from bt_jax import trunk

        train.check_config(config)
        mesh = parallel.device_mesh(config.num_devices)
        self.config, self.progress = config, progress
        # A frozen trunk keeps config.init's weights: images go through it first (its
        # activations cached like in training), then through the trained head.
        self.trunk = trunk.Trunk(config, progress=progress) if trunk.is_frozen(config) else None
        tx, _ = train.make_optimizer(config, steps_per_epoch=1)
        self.steps = train.compile_steps(config, tx, reducers.make_reducer(config))
        # Embedding reads only params and batch_stats: leave the optimizer on the host.
        self.state = parallel.replicate(state.replace(opt_state=None, reducer_state=None),
                                        mesh)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from tqdm.auto import tqdm

        size = self.config.data.image_size
        if images.shape[1:] != (size, size, 3):
            raise ValueError(f"images of shape {images.shape[1:]} but the model expects "
                             f"({size}, {size}, 3) (config.data.image_size).")
        if self.trunk is not None:
            images = self.trunk.activations(images, "evaluation images")[0]
        batch = self.config.eval.batch_size
        # One batch per call: compute_embeddings pads only the last, partial one.
        chunks = [train.compute_embeddings(self.steps, self.state, images[i:i + batch],
                                           self.config)
                  for i in tqdm(range(0, len(images), batch), desc="embedding", unit="batch",
                                disable=not self.progress)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
