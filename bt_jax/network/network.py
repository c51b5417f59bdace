"""The network a config describes, with or without a frozen trunk: one object for every
caller.

With ``config.model.freeze_until`` the backbone is split: the *trunk* keeps
``config.init``'s weights and its activations of each image are cached
(``bt_jax.network.trunk``); the trainable part (the head and projector) reads those
activations instead of images. Training inputs, ``scripts/evaluate.py``, identify and
export all go through ``Network``, so whether a trunk is frozen is decided here and
nowhere else: callers ask for "the network's inputs of these images" or "the whole
function from images to embeddings".
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional

import numpy as np

from bt_jax.data import preprocess
from bt_jax.network import embedding, trunk


def check_config(config) -> None:
    """The one check of what makes a network, before any work: the embedding batch splits
    over the devices, the normalisation exists, the model is buildable and the trunk's
    split layer is a layer of it."""
    n = config.num_devices
    if n < 1 or config.eval.batch_size % n:
        raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple "
                         f"of config.num_devices={n}.")
    preprocess.check_normalization(config.data.normalization)
    embedding.check_model(config)
    trunk.check_split(config)


class Network:
    """The network of ``config``: what it reads, and the whole image-to-embedding function.

    ``inputs(images, name)`` gives what the trainable part reads for uint8 images: the
    images themselves, or the frozen trunk's (cached) activations of them.
    """

    def __init__(self, config, *, progress: bool = True):
        check_config(config)
        self.config, self.progress = config, progress
        self._trunk: Optional[trunk.Trunk] = None

    @property
    def frozen_trunk(self) -> Optional[trunk.Trunk]:
        """The frozen trunk with its activation cache (built on first use), or None."""
        if self._trunk is None and trunk.is_frozen(self.config):
            self._trunk = trunk.Trunk(self.config, progress=self.progress)
        return self._trunk

    def input_transform(self, name: str, *, cache: bool = True
                        ) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """uint8 images of a whole split -> the network's inputs, or None when the network
        reads the images themselves (so a split may be streamed). ``name`` labels the
        cache file; ``cache=False`` runs the trunk without writing one (a cache file read
        again is worth its disk, one per query is not)."""
        if not trunk.is_frozen(self.config):
            return None
        return functools.partial(self._activations, name=name, cache=cache)

    def _activations(self, images: np.ndarray, name: str, cache: bool) -> np.ndarray:
        return self.frozen_trunk.activations(images, name, write=cache)[0]

    def inputs(self, images: np.ndarray, name: str, *, cache: bool = True) -> np.ndarray:
        """What the trainable part reads for ``images`` (uint8 N x S x S x 3)."""
        transform = self.input_transform(name, cache=cache)
        return images if transform is None else transform(images)

    def embed_function(self, variables: Dict[str, Any]) -> Callable:
        """uint8 images -> float32 embeddings on one device in one function, the trunk (if
        frozen) run live rather than from the cache: what an export serialises."""
        head = functools.partial(embedding.embed_step, variables,
                                 model=embedding.create_model(self.config), config=self.config)
        if not trunk.is_frozen(self.config):
            return head
        model, frozen = trunk.trunk_model(self.config), trunk.trunk_variables(self.config)

        def with_trunk(images):
            return head(trunk.forward(model, frozen, images, self.config))

        return with_trunk
