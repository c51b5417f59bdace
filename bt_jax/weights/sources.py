"""Reading the weight files ``bt_jax.weights.convert`` understands, and writing the
release's format.

* the VGGFace2 release pickle (``resnet50_ft_weight.pkl``, ``resnet50_scratch_weight.pkl``):
  a plain pickle of ``{PyTorch name: numpy array}``, read with ``encoding='latin1'`` by an
  unpickler that refuses everything but numpy arrays;
* a ``.pth`` checkpoint of the earlier PyTorch Barlow Twins model: ``{'model': state_dict}``
  (keys may start with ``module.``), read with ``torch.load(weights_only=True)``;
* ``write_release_pickle`` writes arrays in the release's Python 2 pickle format, for tests
  and the benchmark.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from typing import Any, Dict

import numpy as np

from bt_jax.weights import facenet

PICKLE_SUFFIXES = (".pkl", ".pickle")
GRAPH_SUFFIXES = (".pb",)
TORCH_SUFFIXES = (".pth", ".pt")
ZIP_MAGIC = b"PK\x03\x04"
# torch.save's pre-1.6 format starts with this pickled integer.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
# Only what a pickle of numpy arrays needs; anything else in the file is refused.
_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}
_LISTED = 8  # how many offending keys an error message names


def source_kind(path: str) -> str:
    """'pickle', 'torch' or 'graph' (a frozen TensorFlow GraphDef of FaceNet), from the
    file name, or for other names from the first bytes; the content is checked when read."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in GRAPH_SUFFIXES or facenet.is_graphdef(path):
        return "graph"
    raise ValueError(f"--source {path!r}: unknown file type {suffix!r}; name the VGGFace2 "
                     f"pickle *.pkl, a PyTorch checkpoint *.pth and a FaceNet frozen graph "
                     "*.pb.")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but numpy's array reconstruction, so a hostile file cannot run
    arbitrary code through the usual pickle gadgets (os.system and friends)."""

    def find_class(self, module: str, name: str):
        # Old pickles name numpy.core, which numpy 2 keeps only as a warning shim.
        module = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a pickle of numpy arrays never needs")
        return super().find_class(module, name)


def read_vggface2_pickle(path: str) -> Dict[str, np.ndarray]:
    """The release pickle as ``{name: array}``; clear errors for other kinds of file."""
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            raise ValueError(f"{path} is empty; download the VGGFace2 weights again.")
        if head.startswith(ZIP_MAGIC):
            raise ValueError(f"{path} is a torch.save (zip) file, not the VGGFace2 pickle; "
                             "name it *.pth to convert it as a PyTorch checkpoint.")
        f.seek(0)
        try:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except Exception as e:  # a damaged pickle can fail in many ways; all mean the same
            raise ValueError(f"{path} is not a VGGFace2 weight pickle ({type(e).__name__}: "
                             f"{e}); expected a file such as resnet50_ft_weight.pkl.") from None
    if isinstance(obj, int) and obj == LEGACY_TORCH_MAGIC:
        raise ValueError(f"{path} is a (legacy) torch.save file, not the VGGFace2 pickle; "
                         "name it *.pth to convert it as a PyTorch checkpoint.")
    return _check_arrays(obj, path)


def _check_arrays(obj: Any, path: str) -> Dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of weight arrays "
                         "name -> numpy array as the VGGFace2 release does.")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, (np.ndarray, np.generic)):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}; the VGGFace2 "
                             "pickle maps names to numpy arrays.")
    return dict(obj)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ValueError("reading a .pth checkpoint needs PyTorch: pip install torch==2.13.0 "
                         "(the CPU build is enough).") from None
    return torch


def read_torch_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """The ``model`` state dict of a Barlow Twins ``.pth`` as numpy, ``module.`` stripped."""
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports bad files with several exception types
        raise ValueError(f"{path} is not a PyTorch checkpoint that loads with weights_only=True "
                         f"({_torch_load_reason(e)}). If it is the VGGFace2 release, name it "
                         "*.pkl.") from None
    state = obj.get("model", obj.get("state_dict")) if isinstance(obj, dict) else None
    if state is None and isinstance(obj, dict) and all(map(torch.is_tensor, obj.values())):
        state = obj  # a bare state dict, as torch.save(model.state_dict()) writes
    if not isinstance(state, dict) or not state:
        found = sorted(obj)[:_LISTED] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} has no 'model' state dict (found {found}); expected the "
                         "earlier Barlow Twins checkpoint, {'model': model.state_dict(), ...}.")
    return {_strip_module(k): _tensor_to_numpy(torch, k, v, path) for k, v in state.items()}


def _torch_load_reason(error: Exception) -> str:
    """The useful line of torch.load's long weights_only message, without colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    reason = match[1] if match else text.strip().split("\n")[0]
    return f"{type(error).__name__}: {' '.join(reason.split()) or 'empty or truncated file'}"


def _strip_module(key: str) -> str:
    # DataParallel / DistributedDataParallel prefix every name with 'module.'.
    return key[len("module."):] if key.startswith("module.") else key


def _tensor_to_numpy(torch, key: str, value: Any, path: str) -> np.ndarray:
    if not torch.is_tensor(value):
        raise ValueError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, "
                         "not a tensor.")
    value = value.detach().cpu()
    # numpy has no bfloat16; every floating weight ends up float32 anyway.
    return (value.float() if value.is_floating_point() else value).numpy()


# ----------------------------------------------------------------------------------------
# Writing files in the release's format, for tests and the benchmark.


def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str``: the opcode that makes Python 3 need ``encoding='latin1'``."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _py2_ints(values) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"  # a tuple


def _py2_array(array: np.ndarray) -> bytes:
    """The opcodes Python 2's numpy wrote for ``array`` (ndarray.__reduce__, protocol 2)."""
    dtype = (b"cnumpy\ndtype\n" + _py2_str(array.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"<" if array.dtype.itemsize > 1 else b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_ints([0])
            + _py2_str(b"b") + b"\x87R" + b"(K\x01" + _py2_ints(array.shape) + dtype + b"\x89"
            + _py2_str(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
            + b"tb")


def write_release_pickle(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``{name: array}`` as the VGGFace2 release did: a Python 2 (protocol 2) pickle.

    Python 3's pickle cannot produce Python 2 ``str`` objects, and those are what make the
    real file need ``encoding='latin1'``, so the opcodes are written directly.
    """
    with open(path, "wb") as f:
        f.write(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
        for name, array in arrays.items():
            f.write(_py2_str(name.encode("ascii")))
            f.write(_py2_array(np.asarray(array)))
        f.write(b"u.")  # SETITEMS, STOP
