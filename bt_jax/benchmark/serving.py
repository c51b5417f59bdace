"""The exported embedders against the JAX one on one CPU: parity on real faces, speed.

Three ways to embed a face with the same weights: the jitted JAX function
(``Network.embed_function``), the jax.export artifact (``embedder.bin``) and the ONNX graph
run by onnxruntime (``embedder.onnx``). Parity is max |a - b| / max |b| of onnxruntime's
embeddings against the jitted function's on aligned val crops, each side fed as identify
feeds it (the ONNX graph the raw crops, the others Pillow's resize of them). Speed is
embeddings per second at a fixed batch, the median of timed calls after a warm-up one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

import jax
import numpy as np

from bt_jax.benchmark.plan import _cpu_model
from bt_jax.data.folder import decode_image
from bt_jax.identify import export, exported, onnx_export
from bt_jax.identify.crops import IMAGE_SUFFIXES, list_enrolment
from bt_jax.network import trunk
from bt_jax.network.network import Network


def val_files(data_dir: str, count: int, seed: int = 0) -> List[str]:
    """``count`` image files of ``data_dir/<identity>/``, a seeded draw over all of them."""
    files = [path for _, path in list_enrolment(data_dir)
             if path.lower().endswith(IMAGE_SUFFIXES)]
    if len(files) < count:
        raise ValueError(f"{data_dir} holds {len(files)} images, fewer than the {count} "
                         "asked for; lower --count.")
    pick = np.random.default_rng(seed).choice(len(files), count, replace=False)
    return [files[i] for i in sorted(pick)]


def decode(files: Sequence[str], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3) as identify decodes crops (Pillow, bilinear if resized)."""
    out = []
    for path in files:
        with open(path, "rb") as f:
            out.append(decode_image(f.read(), size, path))
    return np.stack(out)


def parity(onnx_embed, jax_embed: Callable, crops: np.ndarray, images: np.ndarray,
           batch: int = 32) -> float:
    """max |onnx - jax| / max |jax| over the embeddings of ``crops`` (raw, for the ONNX
    graph) and ``images`` (the same crops resized, for the JAX function)."""
    ours = onnx_embed(crops)
    theirs = np.concatenate([np.asarray(jax_embed(images[i:i + batch]))
                             for i in range(0, len(images), batch)])
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def throughput(embed: Callable, images: np.ndarray, batch: int, rounds: int) -> float:
    """Embeddings per second of ``embed`` on batches of ``batch`` rows (a warm-up call
    first: it compiles, or lets onnxruntime plan its memory)."""
    rows = images[np.arange(batch) % len(images)]
    np.asarray(embed(rows))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.asarray(embed(rows))
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def embedders(config, variables: Dict[str, Any], folder: str) -> Dict[str, tuple]:
    """{name: (embed, input kind)} of the three embedders of one network; the two exports
    are written under ``folder``."""
    onnx_dir, jax_dir = os.path.join(folder, "onnx"), os.path.join(folder, "jax_export")
    onnx_export.export_onnx(config, variables, onnx_dir)
    export.export_embedder(config, variables, jax_dir, platforms=("cpu",))
    return {"onnxruntime": (exported.load_embedder(onnx_dir), "crops"),
            "jax.export": (exported.load_embedder(jax_dir), "images"),
            "jax.jit": (jax.jit(Network(config, progress=False).embed_function(variables)),
                        "images")}


@contextlib.contextmanager
def float32_trunk():
    """A frozen trunk's activations kept in float32 instead of rounded to the cache's
    float16, in both embedders while it lasts. For parity only: onnxruntime's and XLA's
    convolutions differ in the last float32 bits, so some activations round to
    neighbouring float16 values (about 1e-3 apart) in the two, and the rounding hides
    how close the two graphs are."""
    kept = trunk.CACHE_DTYPE
    trunk.CACHE_DTYPE = np.float32
    try:
        yield
    finally:
        trunk.CACHE_DTYPE = kept


def onnx_parity(config, variables: Dict[str, Any], inputs: Dict[str, np.ndarray],
                folder: str) -> float:
    """``parity`` of a fresh ONNX export against the jitted function."""
    out = onnx_export.export_onnx(config, variables, folder)
    network = jax.jit(Network(config, progress=False).embed_function(variables))
    return parity(exported.load_embedder(out), network, inputs["crops"], inputs["images"])


def measure(config, variables: Dict[str, Any], files: Sequence[str], *,
            batches: Sequence[int] = (1, 64), rounds: int = 5) -> Dict[str, Any]:
    """Parity and embeddings per second of the three embedders on ``files``; with a
    frozen trunk, parity also with its activations in float32 (``float32_trunk``)."""
    crop = int(config.data.crop_size or config.data.image_size)
    inputs = {"crops": decode(files, crop), "images": decode(files, config.data.image_size)}
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        runs = embedders(config, variables, folder)
        ratio = parity(runs["onnxruntime"][0], runs["jax.jit"][0], inputs["crops"],
                       inputs["images"])
        if trunk.is_frozen(config):
            with float32_trunk():
                result["parity_max_rel_float32_trunk"] = onnx_parity(
                    config, variables, inputs, os.path.join(folder, "float32_trunk"))
        speed = {name: {b: throughput(embed, inputs[kind], b, rounds) for b in batches}
                 for name, (embed, kind) in runs.items()}
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "arch": config.model.arch,
            "image_size": int(config.data.image_size), "crop_size": crop,
            "freeze_until": config.model.get("freeze_until") or None,
            "parity_max_rel": ratio, **result, "faces": len(files), "embeddings_per_s": speed,
            "relative_to_jit": {name: {b: speed[name][b] / speed["jax.jit"][b]
                                       for b in batches} for name in speed}}
