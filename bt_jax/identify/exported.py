"""Load an exported embedder: uint8 face crops in, float32 embeddings out, nothing else.

``bt_jax.identify.export.export_embedder`` (or ``scripts/export.py``) writes a folder holding
``embedder.bin``, a serialized ``jax.export`` function with the weights inside it, and
``embedder.json``, its input contract and fingerprint. This module reads that folder with
jax, numpy, json and os only: no model code, no flax, no config, so a deployment needs
neither this project's training stack nor its version of the model classes.

    from bt_jax.identify.exported import load_embedder
    embed = load_embedder("exports/mlfw")
    features = embed(crops)  # uint8 (N, embed.image_size, embed.image_size, 3)

The inputs must be aligned face crops, prepared like the training images: this project
has no face detector.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import jax
import numpy as np

FORMAT_VERSION = 1
FUNCTION_FILE = "embedder.bin"
INFO_FILE = "embedder.json"
FILES = (FUNCTION_FILE, INFO_FILE)
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
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this bt_jax reads "
                         f"version {FORMAT_VERSION}. Load it with the bt_jax that wrote it, "
                         "or export again.")
    return info


class ExportedEmbedder:
    """Callable uint8 images (N, S, S, 3) -> float32 embeddings (N, D), not L2-normalised."""

    def __init__(self, out_dir: str):
        self.info = read_info(out_dir)
        self.out_dir = out_dir
        self.image_size = int(self.info["image_size"])
        self.fingerprint = self.info["fingerprint"]
        self.metric = self.info["metric"]
        self.feature_dim = int(self.info["feature_dim"])
        with open(os.path.join(out_dir, FUNCTION_FILE), "rb") as f:
            serialized = bytearray(f.read())
        try:
            self.exported = jax.export.deserialize(serialized)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 (a damaged file raises anything)
            raise ValueError(f"{os.path.join(out_dir, FUNCTION_FILE)} cannot be read as a "
                             f"jax.export function ({type(e).__name__}: {e}); export "
                             "again.") from None
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


def _rows(n: int) -> int:
    """The batch a chunk of ``n`` rows is padded to: the next power of two, so calls of any
    N compile at most log2(CHUNK) + 1 shapes. Rows are independent in inference mode, so
    the zero rows change nothing."""
    return min(CHUNK, 1 << max(0, n - 1).bit_length())


def load_embedder(out_dir: str) -> ExportedEmbedder:
    """The embedder exported to ``out_dir`` (``embedder.bin`` and ``embedder.json``)."""
    return ExportedEmbedder(out_dir)
