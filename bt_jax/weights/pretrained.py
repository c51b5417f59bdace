"""Load converted weights (``scripts/convert_weights.py`` output) into a fresh model.

A converted folder holds ``variables/`` (an orbax checkpoint of ``{'params': ...,
'batch_stats': ...}`` whose top-level keys are ``backbone`` and maybe ``projector``)
and ``manifest.json`` describing where it came from.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

HOW_TO_FIX = (
    "Convert the VGGFace2 weights first:\n"
    "  python scripts/convert_weights.py --source resnet50_ft_weight.pkl "
    "--out converted_weights/vggface2_resnet50_ft\n"
    "or train from scratch with --config.init=scratch.")


def _check_shapes(name: str, loaded, target) -> None:
    flat_loaded = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    flat_target = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    extra = sorted(jax.tree_util.keystr(p) for p in flat_loaded if p not in flat_target)
    if extra:
        raise ValueError(f"converted weights hold {name}{extra[0]} (and {len(extra) - 1} more) "
                         "that the model lacks; convert without --keep_fc, or check "
                         "config.model.arch.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        key = jax.tree_util.keystr(path)
        if path not in flat_loaded:
            raise ValueError(f"converted weights lack {name}{key}; were they converted for "
                             "this architecture (config.model.arch)?")
        got = np.shape(flat_loaded[path])
        if got != np.shape(leaf):
            raise ValueError(f"converted weights {name}{key} have shape {got}, the model "
                             f"expects {np.shape(leaf)}.")


def read_converted(path: str) -> Any:
    """The converted folder's variables ``{'params': {part: ...}, 'batch_stats': ...}``."""
    variables_dir = os.path.abspath(os.path.join(path, "variables"))
    if not os.path.isdir(variables_dir):
        raise FileNotFoundError(f"config.init={path!r}: no converted weights at "
                                f"{variables_dir}.\n{HOW_TO_FIX}")
    return ocp.StandardCheckpointer().restore(variables_dir)


def converted_digest(path: str) -> str:
    """sha256 (32 hex) of every array of ``path``'s converted weights: names, shapes, dtypes
    and values. Of the arrays, not the files' bytes: orbax names its files at random and
    stamps the time, so converting the same weights again must give the same digest."""
    h = hashlib.sha256()
    for key, leaf in jax.tree_util.tree_flatten_with_path(read_converted(path))[0]:
        leaf = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(key)} {leaf.shape} {leaf.dtype.str}\n".encode())
        h.update(leaf.data)
    return h.hexdigest()[:32]


def _layers_of(tree, target):
    """``tree`` restricted to the top-level layers ``target`` has (a frozen trunk's head)."""
    return {name: value for name, value in tree.items() if name in target}


def load_pretrained(path: str, params: Any, batch_stats: Any,
                    head_only: bool = False) -> Tuple[Any, Any]:
    """Replace the parts of ``params``/``batch_stats`` found in the converted folder.

    ``head_only``: the model is the head of a split backbone (config.model.freeze_until),
    so the converted backbone's other layers (the frozen trunk) are left out here.
    """
    loaded = read_converted(path)
    params, batch_stats = dict(params), dict(batch_stats)
    for part in loaded["params"]:
        if part not in params:
            raise ValueError(f"converted weights hold {part!r}, the model has {sorted(params)}.")
        new_params, new_stats = loaded["params"][part], loaded["batch_stats"][part]
        if head_only and part == "backbone":
            new_params = _layers_of(new_params, params[part])
            new_stats = _layers_of(new_stats, batch_stats[part])
        _check_shapes(f"params[{part!r}]", new_params, params[part])
        _check_shapes(f"batch_stats[{part!r}]", new_stats, batch_stats[part])
        params[part] = jax.tree.map(np.asarray, new_params)
        batch_stats[part] = jax.tree.map(np.asarray, new_stats)
    return params, batch_stats
