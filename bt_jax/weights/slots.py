"""The target of a conversion: every Flax leaf of the model, named by its PyTorch key.

The target tree comes from ``jax.eval_shape`` of the Flax model's init, so every check
(missing, unexpected and misshapen entries, NaNs) runs before any weight is copied and no
real initialisation is needed. ``fill`` then moves each array into Flax layout.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.models.backbones import ARCHS
from bt_jax.models.barlow import Projector

# The release's fc expects the 2048 features of a 224x224 input (7x7 map, 7x7 pool).
FC_IMAGE_SIZE = 224
_LISTED = 8  # how many offending keys an error message names


@dataclasses.dataclass(frozen=True)
class Slot:
    """One Flax leaf and the PyTorch entry that fills it."""

    torch_key: str
    collection: str  # 'params' or 'batch_stats'
    path: Tuple[str, ...]  # ('backbone', 'layer1_0', 'conv1', 'kernel')
    shape: Tuple[int, ...]  # Flax layout

    @property
    def torch_shape(self) -> Tuple[int, ...]:
        if self.path[-1] != "kernel":
            return self.shape
        if len(self.shape) == 4:  # HWIO <- OIHW
            return (self.shape[3], self.shape[2], self.shape[0], self.shape[1])
        return self.shape[::-1]  # (in, out) <- (out, in)

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        if self.path[-1] != "kernel":
            return array
        return np.ascontiguousarray(array.transpose((2, 3, 1, 0)) if array.ndim == 4 else array.T)


def _torch_module_name(part: str, name: str) -> str:
    """Flax module name -> PyTorch: layer2_0 -> layer2.0, linear1 -> 3 (Sequential index)."""
    if part == "projector":
        kind, index = re.fullmatch(r"(linear|bn)(\d+)", name).groups()
        return str(3 * int(index) + (kind == "bn"))
    match = re.fullmatch(r"layer(\d+)_(\d+)", name)
    if match:
        return f"layer{match[1]}.{match[2]}"
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)


_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


@functools.lru_cache(maxsize=8)
def target_slots(arch: str, num_classes: Optional[int], projector: Optional[Tuple[int, ...]],
                 prefixes: Tuple[Tuple[str, str], ...]) -> Tuple[Slot, ...]:
    """Every leaf of the model's variables with its PyTorch key.

    ``projector`` is (in_features, *layer sizes) or None; ``prefixes`` maps each part
    ('backbone', 'projector') to the key prefix it has in the source file.
    """
    if arch not in ARCHS:
        raise ValueError(f"--arch={arch!r} is unknown; use one of {sorted(ARCHS)}.")
    image = jnp.zeros((1, FC_IMAGE_SIZE, FC_IMAGE_SIZE, 3), jnp.float32)
    backbone = ARCHS[arch](num_classes=num_classes)
    trees = {"backbone": jax.eval_shape(
        lambda: backbone.init(jax.random.key(0), image, train=False))}
    if projector:
        features = jnp.zeros((1, projector[0]), jnp.float32)
        trees["projector"] = jax.eval_shape(
            lambda: Projector(projector[1:]).init(jax.random.key(0), features, train=False))
    prefix = dict(prefixes)
    slots = []
    for part, tree in trees.items():
        for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            collection, *modules, leaf_name = [k.key for k in keys]
            name = ".".join([_torch_module_name(part, m) for m in modules]
                            + [_LEAF_NAMES[collection, leaf_name]])
            slots.append(Slot(prefix[part] + name, collection,
                              (part, *modules, leaf_name), tuple(leaf.shape)))
    return tuple(slots)


def expected_source_shapes(arch: str = "resnet50", keep_fc: bool = True,
                           num_classes: int = 8631) -> Dict[str, Tuple[int, ...]]:
    """PyTorch name -> shape of a VGGFace2-format pickle for ``arch`` (for tests, benchmarks)."""
    slots = target_slots(arch, num_classes if keep_fc else None, None, (("backbone", ""),))
    return {slot.torch_key: slot.torch_shape for slot in slots}


# ----------------------------------------------------------------------------------------
# Matching the source against the target.


def split_extras(state: Dict[str, np.ndarray], barlow: bool, keep_fc: bool, fc_prefix: str):
    """Pop the entries that are known and not converted: (dropped names, ignored count)."""
    ignored = [k for k in state if k.endswith("num_batches_tracked")]
    drop = [] if keep_fc else [k for k in state if k.startswith(fc_prefix + "fc.")]
    if barlow:
        # The loss's affine-free BatchNorm of the embeddings: bt_jax normalises in the loss.
        drop += [k for k in ("bn.running_mean", "bn.running_var") if k in state]
    for key in ignored + drop:
        state.pop(key)
    return sorted(drop), len(ignored)


def projector_layout(state: Dict[str, np.ndarray], path: str) -> Optional[Tuple[int, ...]]:
    """(in_features, *out sizes) of the checkpoint's projector, or None if it has none.

    PyTorch's projector is Sequential(Linear, BN, ReLU, ..., Linear), so the Linear
    weights sit at indices 0, 3, 6, ...
    """
    linears = {}
    for key, value in state.items():
        match = re.fullmatch(r"projector\.(\d+)\.weight", key)
        if match and value.ndim == 2:
            linears[int(match[1])] = value.shape
    if not linears:
        return None
    indices = sorted(linears)
    if indices != list(range(0, 3 * len(indices), 3)):
        raise ValueError(f"{path}: projector Linear layers sit at Sequential indices {indices}; "
                         "expected 0, 3, 6, ... (Linear, BatchNorm1d, ReLU repeated).")
    return (linears[0][1],) + tuple(linears[i][0] for i in indices)


def _names(keys: List[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def check_keys(state: Dict[str, np.ndarray], slots, path: str, arch: str) -> None:
    """Missing and unexpected entries, reported together."""
    expected = {slot.torch_key for slot in slots}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing entries that {arch} needs: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected entries that {arch} has no place for: "
                        f"{_names(unexpected)}")
    if problems:
        raise ValueError(f"{path} does not match the {arch} architecture: " + "; ".join(problems)
                         + ". Check that it is a ResNet-50 VGGFace2 file (or a Barlow Twins "
                         "checkpoint of one) and that --arch is right.")


def check_shapes(state: Dict[str, np.ndarray], slots, path: str, arch: str) -> None:
    """Every entry has the PyTorch shape the target leaf needs, compared in PyTorch layout."""
    wrong = [f"{s.torch_key}: file {tuple(state[s.torch_key].shape)}, {arch} expects "
             f"{s.torch_shape} (Flax {'/'.join(s.path)} {s.shape})"
             for s in slots if tuple(state[s.torch_key].shape) != s.torch_shape]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} shape mismatches (PyTorch layout): "
                         + "; ".join(wrong[:_LISTED]) + ("; ..." if len(wrong) > _LISTED else ""))


def checked_float32(array: np.ndarray, key: str, path: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: {key} has dtype {array.dtype}; weights must be floating point.")
    array = array.astype(np.float32, copy=False)
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(f"{path}: {key} holds {bad} NaN/Inf values of {array.size}; the file is "
                         "damaged or the run diverged. Refusing to convert it.")
    return array


def fill(state: Dict[str, np.ndarray], slots, path: str) -> Dict[str, Dict[str, Any]]:
    """Nested ``{collection: {part: ...}}`` float32 numpy trees in Flax layout.

    Entries are popped from ``state`` as they are converted so that the source and the
    result never both sit in memory in full.
    """
    variables: Dict[str, Dict[str, Any]] = {"params": {}, "batch_stats": {}}
    for slot in slots:
        array = checked_float32(state.pop(slot.torch_key), slot.torch_key, path)
        node = variables[slot.collection]
        for name in slot.path[:-1]:
            node = node.setdefault(name, {})
        node[slot.path[-1]] = slot.to_flax(array)
    return variables
