"""Run an ONNX-exported embedder with onnxruntime: no jax, jaxlib or flax.

``scripts/export.py --format onnx`` writes ``embedder.onnx``: the whole embedder (a frozen
trunk and the trained part as one graph) from raw aligned crops to embeddings, with the
resize to the network's image size (Pillow's bilinear, bit for bit) and the normalisation
inside the graph and a symbolic batch dimension. Its settings (what ``embedder.json``
holds for a jax.export artifact) are a JSON string in the model's metadata under
``bt_jax``, with the sha256 of the graph's weights, checked here at load.

    from bt_jax.identify.onnx_embedder import OnnxEmbedder
    embed = OnnxEmbedder("exports/mlfw_onnx")
    features = embed(crops)  # uint8 (N, embed.crop_size, embed.crop_size, 3), RGB 0-255

Without this project: ``onnxruntime.InferenceSession("embedder.onnx").run(None,
{"crops": crops})[0]`` (docs/onnx.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from bt_jax.identify.exported import ONNX_FILE, check_info

# 1: the first ONNX layout (input "crops", output "embeddings", metadata key "bt_jax").
ONNX_FORMAT_VERSION = 1
METADATA_KEY = "bt_jax"
INPUT_NAME, OUTPUT_NAME = "crops", "embeddings"
# The metadata keys the loader reads or that define the input contract, with their types.
ONNX_INFO_TYPES = {"format_version": int, "format": str, "image_size": int, "crop_size": int,
                   "normalization": str, "embedding": str, "metric": str,
                   "feature_dim": int, "fingerprint": str, "weights_sha256": str}
# Rows per run: bounds the activations held at once, whatever N the caller passes.
CHUNK = 256
INSTALL = "pip install 'bt_jax[onnx]' (jax2onnx, onnx and onnxruntime)"


def weights_digest(model) -> str:
    """sha256 of the graph's weights: every initializer (by name: its dtype, shape and
    values, however the proto stores them) and every Constant node's tensor. The metadata
    that records it is outside what it covers."""
    from onnx import numpy_helper

    h = hashlib.sha256()

    def add(name: str, tensor) -> None:
        array = np.ascontiguousarray(numpy_helper.to_array(tensor))
        h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        h.update(array.tobytes())

    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        add(tensor.name, tensor)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    add(node.output[0], attribute.t)
    return h.hexdigest()


def _imports():
    """(onnx, onnxruntime), or one line saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"the ONNX embedder needs onnx and onnxruntime ({e}); "
                          f"{INSTALL}.") from None
    return onnx, onnxruntime


def read_model(out_dir: str):
    """(model, checked info) of ``out_dir/embedder.onnx``: its metadata present and typed,
    and the weights the ones the metadata's digest names."""
    onnx, _ = _imports()
    path = os.path.join(out_dir, ONNX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {ONNX_FILE} in {out_dir!r}; write one with "
                                "scripts/export.py --format onnx.")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 (a damaged protobuf raises anything)
        raise ValueError(f"{path} cannot be read as an ONNX model ({type(e).__name__}: "
                         f"{e}); export again with scripts/export.py --format onnx.") from None
    info = _metadata(model, path)
    digest = weights_digest(model)
    if digest != info["weights_sha256"]:
        raise ValueError(f"{path}: its weights have sha256 {digest}, but its metadata records "
                         f"{info['weights_sha256']}: the graph was changed after the export; "
                         "export again with scripts/export.py --format onnx.")
    return model, info


def _metadata(model, path: str) -> Dict[str, Any]:
    """The checked bt_jax metadata of an ONNX model."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by "
                         "scripts/export.py --format onnx; export again with it.")
    try:
        info = json.loads(props[METADATA_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata is not valid JSON ({e}); "
                         "export again with scripts/export.py --format onnx.") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata is a "
                         f"{type(info).__name__}, not an object; export again.")
    if info.get("format_version") != ONNX_FORMAT_VERSION or info.get("format") != "onnx":
        raise ValueError(f"{path} has format {info.get('format')!r} version "
                         f"{info.get('format_version')!r}; this bt_jax reads onnx version "
                         f"{ONNX_FORMAT_VERSION}. Export again.")
    check_info(info, path, ONNX_INFO_TYPES)
    return info


def _check_graph(session, info: Dict[str, Any], path: str) -> None:
    """The metadata's sizes are the graph's: an edited ``crop_size`` would otherwise refuse
    the caller's correct crops, or pass wrong ones in."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ValueError(f"{path} takes {[i.name for i in inputs]} and gives "
                         f"{[o.name for o in outputs]}, not {INPUT_NAME!r} to "
                         f"{OUTPUT_NAME!r}; export again with scripts/export.py.")
    size, takes = info["crop_size"], list(inputs[0].shape[1:])
    if takes != [size, size, 3] or inputs[0].type != "tensor(uint8)":
        raise ValueError(f"{path} says crop_size {size}, but the graph takes "
                         f"{inputs[0].type} of shape (N, {', '.join(map(str, takes))}); "
                         "the metadata does not belong to this graph: export again.")
    if outputs[0].shape[-1] != info["feature_dim"]:
        raise ValueError(f"{path} says feature_dim {info['feature_dim']}, but the graph "
                         f"gives {outputs[0].shape[-1]} floats per image; export again.")


class OnnxEmbedder:
    """Callable uint8 crops (N, C, C, 3), C = crop_size, raw RGB -> float32 embeddings
    (N, D), not L2-normalised, computed by onnxruntime."""

    def __init__(self, out_dir: str, *, threads: Optional[int] = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        _, ort = _imports()
        model, self.info = read_model(out_dir)
        self.out_dir, self.path = out_dir, os.path.join(out_dir, ONNX_FILE)
        self.image_size, self.crop_size = self.info["image_size"], self.info["crop_size"]
        self.fingerprint, self.metric = self.info["fingerprint"], self.info["metric"]
        self.feature_dim = self.info["feature_dim"]
        # identify decodes files for this embedder at the crop size: the graph resizes.
        self.reads = {**{k: self.info[k] for k in ("image_size", "crop_size", "normalization",
                                                   "embedding", "metric")},
                      "image_size": self.crop_size}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=list(providers))
        _check_graph(self.session, self.info, self.path)

    def check(self, images) -> np.ndarray:
        images = np.asarray(images)
        size = self.crop_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}; this "
                             f"ONNX embedder takes uint8 (N, {size}, {size}, 3) aligned face "
                             f"crops, raw RGB (crop_size={size}; it resizes them to "
                             f"{self.image_size} px itself).")
        return images

    def __call__(self, images) -> np.ndarray:
        images = self.check(images)
        if not len(images):
            return np.zeros((0, self.feature_dim), np.float32)
        out = [self.session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + CHUNK]})[0]
               for i in range(0, len(images), CHUNK)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"OnnxEmbedder({self.out_dir!r}, {self.info.get('arch')}, {self.crop_size} px "
                f"-> {self.feature_dim}, {self.metric})")


def exports_onnx(argv: Sequence[str]) -> bool:
    """Whether a command line names ``--exported DIR`` with DIR holding ``embedder.onnx``:
    then an entry point can skip what only jax needs (the start-up probe of XLA's flags).
    Read before absl parses the flags, as ``devices.set_up_cpu`` reads its own."""
    for i, arg in enumerate(argv):
        folder = None
        if arg.startswith("--exported="):
            folder = arg.split("=", 1)[1]
        elif arg == "--exported" and i + 1 < len(argv):
            folder = argv[i + 1]
        if folder:
            return os.path.isfile(os.path.join(folder, ONNX_FILE))
    return False

