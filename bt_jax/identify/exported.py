"""Load an exported embedder: uint8 face crops in, float32 embeddings out, nothing else.

``bt_jax.identify.export.export_embedder`` (or ``scripts/export.py``) writes a folder holding
``embedder.bin``, a serialized ``jax.export`` function with the weights inside it, and
``embedder.json``, its input contract and fingerprint. This module reads that folder with
jax, numpy, json and os only: no model code, no flax, no config, so a deployment needs
neither this project's training stack nor its version of the model classes. A folder
holding ``embedder.onnx`` (``scripts/export.py --format onnx``) is handed to
``bt_jax.identify.onnx_embedder`` and runs on onnxruntime without jax: jax is imported
here only when a jax.export function is read.

    from bt_jax.identify.exported import load_embedder
    embed = load_embedder("exports/mlfw")
    features = embed(crops)  # uint8 (N, embed.image_size, embed.image_size, 3)

The inputs must be aligned face crops, prepared like the training images
(scripts/align.py makes them from photos).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

import numpy as np

# 2: embedder.json records embedder.bin's sha256 (function_sha256), checked at load.
FORMAT_VERSION = 2
FUNCTION_FILE = "embedder.bin"
INFO_FILE = "embedder.json"
FILES = (FUNCTION_FILE, INFO_FILE)
# scripts/export.py --format onnx: one file, its settings in the model's metadata.
ONNX_FILE = "embedder.onnx"
# What an export folder may hold: a folder of either format is replaced by the other.
EXPORT_FILES = FILES + (ONNX_FILE,)
# The keys of embedder.json that the loader reads or that describe the input contract, with
# their types; other keys (arch, jax_version, ...) are notes for people.
INFO_TYPES = {"format_version": int, "image_size": int, "crop_size": int,
              "normalization": str, "embedding": str, "metric": str, "feature_dim": int,
              "fingerprint": str, "platforms": list, "function_sha256": str}
# Rows per call: bounds the activations held at once, whatever N the caller passes.
CHUNK = 256


def read_info(out_dir: str) -> Dict[str, Any]:
    """The checked ``embedder.json`` of an export folder."""
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"no exported embedder at {out_dir!r}: the folder does not "
                                "exist; write one with scripts/export.py.")
    missing = [name for name in FILES if not os.path.isfile(os.path.join(out_dir, name))]
    if missing:
        raise FileNotFoundError(f"{out_dir!r} is not an exported embedder: it lacks "
                                f"{', '.join(missing)}; export again with scripts/export.py.")
    path = os.path.join(out_dir, INFO_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); export again with "
                         "scripts/export.py.") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path} holds a {type(info).__name__}, not an object of the "
                         "embedder's settings; export again with scripts/export.py.")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this bt_jax reads "
                         f"version {FORMAT_VERSION}. Load it with the bt_jax that wrote it, "
                         "or export again.")
    check_info(info, path)
    return info


def check_info(info: Dict[str, Any], path: str, types: Dict[str, type] = INFO_TYPES) -> None:
    """Every key of ``types`` present with its type: an edited or cut file is named here,
    not as a KeyError or a wrong verdict on the caller's images later."""
    missing = sorted(set(types) - set(info))
    if missing:
        raise ValueError(f"{path} lacks the key{'s' * (len(missing) > 1)} "
                         f"{', '.join(missing)}; export again with "
                         "scripts/export.py.")
    for key, kind in types.items():
        value = info[key]
        # bool is an int to isinstance, but True is no image size.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: {key} is {value!r} ({type(value).__name__}), not "
                             f"{'an' if kind is int else 'a'} {kind.__name__}; export again "
                             "with scripts/export.py.")
    small = [k for k in ("image_size", "crop_size", "feature_dim") if info[k] < 1]
    if small:
        raise ValueError(f"{path}: {small[0]} is {info[small[0]]}, not a positive size; "
                         "export again with scripts/export.py.")


class ExportedEmbedder:
    """Callable uint8 images (N, S, S, 3) -> float32 embeddings (N, D), not L2-normalised."""

    def __init__(self, out_dir: str):
        self.info = read_info(out_dir)
        self.out_dir = out_dir
        self.image_size = self.info["image_size"]
        self.fingerprint = self.info["fingerprint"]
        self.metric = self.info["metric"]
        self.feature_dim = self.info["feature_dim"]
        self.exported = _read_function(out_dir, self.info)
        _check_contract(self.exported, self.info, os.path.join(out_dir, INFO_FILE))
        import jax

        # One compilation per padded batch shape (see _rows), reused on every call.
        self._call = jax.jit(self.exported.call)

    def check(self, images) -> np.ndarray:
        images = np.asarray(images)
        size = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}; this "
                             f"embedder takes uint8 (N, {size}, {size}, 3) aligned face crops "
                             f"(image_size={size}): resize or crop them to {size} px first.")
        return images

    def __call__(self, images) -> np.ndarray:
        images = self.check(images)
        if not len(images):
            return np.zeros((0, self.feature_dim), np.float32)
        out = []
        for start in range(0, len(images), CHUNK):
            chunk = images[start:start + CHUNK]
            rows = _rows(len(chunk))
            padded = np.concatenate(
                [chunk, np.zeros((rows - len(chunk),) + chunk.shape[1:], np.uint8)])
            out.append(np.asarray(self._call(padded))[:len(chunk)])
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"ExportedEmbedder({self.out_dir!r}, {self.info.get('arch')}, "
                f"{self.image_size} px -> {self.feature_dim}, {self.metric})")


def _read_function(out_dir: str, info: Dict[str, Any]):
    """The deserialized ``embedder.bin``, refused unless its sha256 is the one its
    ``embedder.json`` records: a .bin from another export would embed with another
    network under this fingerprint."""
    path = os.path.join(out_dir, FUNCTION_FILE)
    with open(path, "rb") as f:
        serialized = bytearray(f.read())
    digest = hashlib.sha256(serialized).hexdigest()
    if digest != info["function_sha256"]:
        raise ValueError(f"{path} has sha256 {digest}, but {os.path.join(out_dir, INFO_FILE)} "
                         f"records {info['function_sha256']}: the two files are not from one "
                         "export (or the .bin was changed); export again with "
                         "scripts/export.py.")
    import jax

    try:
        return jax.export.deserialize(serialized)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 (a damaged file raises anything)
        raise ValueError(f"{path} cannot be read as a jax.export function "
                         f"({type(e).__name__}: {e}); export again.") from None


def _check_contract(function, info: Dict[str, Any], path: str) -> None:
    """The .json's sizes and platforms are the function's: an edited ``image_size`` would
    otherwise refuse the caller's correct crops, or pass wrong ones to the function."""
    size = info["image_size"]
    if len(function.in_avals) != 1 or len(function.out_avals) != 1:
        raise ValueError(f"{path}'s embedder.bin takes {len(function.in_avals)} arrays and "
                         f"gives {len(function.out_avals)}, not one batch of crops to one of "
                         "embeddings; export again with scripts/export.py.")
    # The batch dimension is symbolic ("b"); the others are plain ints.
    takes = tuple(function.in_avals[0].shape)[1:]
    gives = function.out_avals[0].shape[-1]
    if takes != (size, size, 3):
        raise ValueError(f"{path} says image_size {size}, but embedder.bin takes crops of "
                         f"shape (N, {', '.join(map(str, takes))}): the .json does not "
                         "belong to this function (edited?); export again.")
    if gives != info["feature_dim"]:
        raise ValueError(f"{path} says feature_dim {info['feature_dim']}, but embedder.bin "
                         f"gives {gives} floats per image: the .json does not belong to this "
                         "function (edited?); export again.")
    if list(function.platforms) != info["platforms"]:
        raise ValueError(f"{path} says platforms {info['platforms']}, but embedder.bin runs "
                         f"on {list(function.platforms)}; export again.")


def _rows(n: int) -> int:
    """The batch a chunk of ``n`` rows is padded to: the next power of two, so calls of any
    N compile at most log2(CHUNK) + 1 shapes. Rows are independent in inference mode, so
    the zero rows change nothing."""
    return min(CHUNK, 1 << max(0, n - 1).bit_length())


def load_embedder(out_dir: str):
    """The embedder exported to ``out_dir``: an ``OnnxEmbedder`` (onnxruntime, no jax) when
    it holds ``embedder.onnx``, else the jax.export function (``embedder.bin`` and
    ``embedder.json``)."""
    if os.path.isfile(os.path.join(out_dir, ONNX_FILE)):
        from bt_jax.identify import onnx_embedder

        return onnx_embedder.OnnxEmbedder(out_dir)
    return ExportedEmbedder(out_dir)
