"""The network as an embedder: what both the trainer and the evaluator build from a config.

The model of ``config.model``, its input (normalised images, or a frozen trunk's cached
activations), its seeded initial weights, and the per-device embedding step with the
host loop that pads every batch to one compiled shape. The trainer's end-of-run check
and ``scripts/evaluate.py`` call the same functions, so they see the same features;
nothing here knows about optimizers, reducers or training state.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.runtime import distributed, parallel
from bt_jax.data import augment, preprocess
from bt_jax.network import trunk
from bt_jax.models.backbones import ARCHS, create_backbone
from bt_jax.models.barlow import BarlowTwins, Projector, parse_projector_sizes
from bt_jax.runtime.parallel import AXIS
from bt_jax.weights.pretrained import load_pretrained

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_model(config) -> None:
    """config.model names a backbone and a dtype that exist."""
    m = config.model
    if m.arch not in ARCHS or m.dtype not in DTYPES:
        raise ValueError(f"config.model.arch={m.arch!r} / dtype={m.dtype!r}: arch must be one "
                         f"of {sorted(ARCHS)} and dtype one of {sorted(DTYPES)}.")


def create_model(config, axis_name=None) -> BarlowTwins:
    """The Barlow Twins model of ``config.model``; ``axis_name`` syncs its BatchNorm."""
    check_model(config)
    m = config.model
    dtype = DTYPES[m.dtype]
    settings = trunk.head_settings(config)  # shared with the PyTorch twin of the benchmark
    if m.arch in trunk.INCEPTION_ARCHS:
        settings["remat"] = m.remat  # how the step is computed: the twin has no such switch
    backbone = create_backbone(m.arch, m.pool_window, dtype=dtype, axis_name=axis_name,
                               **settings)
    projector = Projector(parse_projector_sizes(m.projector), dtype=dtype, axis_name=axis_name)
    return BarlowTwins(backbone, projector)


def network_input(images, config):
    """What the network takes: normalised images, or a frozen trunk's cached activations."""
    if trunk.is_frozen(config):
        return images.astype(jnp.float32)
    return preprocess.normalize(images, config.data.normalization)


def training_input(key, images, config, view: int):
    """What the network trains on for one view of a pair batch: augmented, normalised
    images; a frozen trunk's activations as they are (image augmentation belongs to the
    trunk's input). ``view`` 1 is the image a synthetic mask may be drawn on."""
    if trunk.is_frozen(config):
        return network_input(images, config)
    return preprocess.normalize(augment.augment(key, images, config.augment, view=view),
                                config.data.normalization)


def input_spec(config) -> Tuple[Tuple[int, ...], Any]:
    """(shape, dtype) of one input as the data pipeline delivers it: a uint8 image, or the
    frozen trunk's activations of one in the cache's dtype."""
    shape = trunk.input_shape(config)
    return shape, (trunk.CACHE_DTYPE if trunk.is_frozen(config) else np.uint8)


def _init_fn(config):
    dummy = np.zeros((2,) + trunk.input_shape(config), np.float32)
    init = functools.partial(create_model(config).init, train=False)
    # Key 1 of the run's seed: the trainer folds 2 for its own rng, so both agree.
    return lambda: init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), dummy, dummy)


def variable_shapes(config) -> Dict[str, Any]:
    """{'params', 'batch_stats'} as ShapeDtypeStructs: a restore template, no weights built."""
    return jax.eval_shape(_init_fn(config))


def initial_variables(config) -> Dict[str, Any]:
    """Host {'params', 'batch_stats'}: seeded random, then ``config.init``'s converted weights
    unless it is 'scratch' (with a frozen trunk only the head's part of them)."""
    variables = jax.jit(_init_fn(config))()
    params, batch_stats = variables["params"], variables["batch_stats"]
    if config.init != "scratch":
        params, batch_stats = load_pretrained(config.init, params, batch_stats,
                                              head_only=trunk.is_frozen(config))
    return {"params": jax.tree.map(np.asarray, params),
            "batch_stats": jax.tree.map(np.asarray, batch_stats)}


# ----------------------------------------------------------------------------------------
# The per-device embedding step and its host loop.


def network_variables(state):
    """What the network reads of a TrainState: the embedding step needs nothing else."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def embed_step(variables, images, *, model, config):
    """Backbone features (or projector embeddings) of this device's slice of inputs."""
    x = network_input(images, config)
    method = BarlowTwins.embed if config.eval.embedding == "projector" else BarlowTwins.features
    return model.apply(variables, x, train=False, method=method).astype(jnp.float32)


def compile_embed(config, model=None) -> Callable:
    """``embed_step`` under pmap over AXIS: (replicated variables, (devices, b, ...)) ->
    (devices, b, D)."""
    model = model or create_model(config, axis_name=AXIS)
    return jax.pmap(functools.partial(embed_step, model=model, config=config), axis_name=AXIS,
                    devices=parallel.pmap_devices(config.num_devices))


def padded_batches(arrays, batch_size: int) -> Iterator[Tuple[Any, np.ndarray]]:
    """Yield (chunk, mask) with every chunk padded to ``batch_size``: nothing is dropped.
    ``arrays`` is one array or a tuple of arrays of equal length."""
    single = not isinstance(arrays, tuple)
    arrays = (arrays,) if single else arrays
    total = len(arrays[0])
    for start in range(0, total, batch_size):
        def pad(a):
            part = a[start:start + batch_size]
            return np.concatenate([part, np.zeros((batch_size - len(part),) + part.shape[1:],
                                                  part.dtype)])
        chunk = tuple(pad(a) for a in arrays)
        mask = (np.arange(batch_size) < total - start).astype(np.float32)
        yield (chunk[0] if single else chunk), mask


def compute_embeddings(embed, variables, images: np.ndarray, config) -> np.ndarray:
    """Embeddings of all ``images`` with a compiled ``embed`` (``compile_embed``), every
    batch padded to config.eval.batch_size and un-padded.

    Each process embeds its slice of every batch; the slices are gathered back in order.
    """
    n, out = parallel.local_count(config.num_devices), []
    for chunk, mask in padded_batches(images, config.eval.batch_size):
        emb = parallel.local_values(
            embed(variables, parallel.shard(distributed.process_rows(chunk), n)))
        emb = distributed.gather_rows(emb.reshape(-1, emb.shape[-1]))
        out.append(emb[mask > 0])
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------
# What made a set of embeddings: two galleries compare only under the same fingerprint.

FINGERPRINT_VERSION = 1


def preprocessing(config) -> Dict[str, Any]:
    """The input contract of an embedder: aligned crops of this size, this normalisation,
    and which output is the embedding."""
    return {"image_size": int(config.data.image_size),
            "crop_size": int(config.data.crop_size or config.data.image_size),
            "normalization": config.data.normalization,
            "embedding": config.eval.embedding, "metric": config.eval.metric}


def fingerprint(config, variables: Dict[str, Any]) -> str:
    """sha256 (32 hex) of the model settings, the preprocessing and every weight (the frozen
    trunk's too): embeddings with equal fingerprints come from the same function."""
    trees = [variables] + ([trunk.trunk_variables(config)] if trunk.is_frozen(config) else [])
    flat = [leaf for tree in trees for leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    settings = {"version": FINGERPRINT_VERSION, "model": config.model.to_dict(),
                **preprocessing(config), "names": [jax.tree_util.keystr(p) for p, _ in flat]}
    return trunk.digest([np.asarray(leaf) for _, leaf in flat], settings)
