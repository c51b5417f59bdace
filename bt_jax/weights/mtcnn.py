"""MTCNN's weights (P-, R- and O-Net) from the ``mtcnn`` wheel, read without running its code.

The ``mtcnn==1.0.0`` wheel on PyPI (MIT) ships ``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``:
lz4-compressed joblib pickles, each a list of float32 arrays in Keras ``get_weights()``
order. The wheel is downloaded with pip (``--no-deps``; the package, which needs
TensorFlow, is never installed or imported), each member is checked against a pinned
sha256, and the arrays are read by a restricted unpickler that accepts only joblib's array
records. They are saved once as ``mtcnn/mtcnn-1.0.0.npz`` in the cache, so detection needs
neither joblib nor lz4 at run time; every load checks the arrays against a pinned digest.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional

import numpy as np

from bt_jax.weights import download

PACKAGE = "mtcnn==1.0.0"
MEMBERS = {  # stage -> (member of the wheel, sha256 of its bytes)
    "pnet": ("mtcnn/assets/weights/pnet.lz4",
             "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5"),
    "rnet": ("mtcnn/assets/weights/rnet.lz4",
             "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee"),
    "onet": ("mtcnn/assets/weights/onet.lz4",
             "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3"),
}
# arrays_digest of the converted arrays: what every load checks.
ARRAYS_SHA256 = "f5fc05140257d59c3e6aa729565510a9c8f3ac5d1cb183e21d63424d30c032e5"
FILENAME = "mtcnn-1.0.0.npz"

# Keras layer names in get_weights() order: a conv or dense layer gives kernel and bias, a
# PReLU its alpha. Flax names drop the hyphen.
LAYERS = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4-1", "conv4-2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4",
             "fc5-1", "fc5-2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4",
             "fc5", "prelu5", "fc6-1", "fc6-2", "fc6-3"],
}
# What a joblib array record may name; anything else in the pickle is refused.
_ALLOWED = {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("numpy", "dtype"),
            ("numpy", "ndarray")}


class UnsafeWeightsError(ValueError):
    """The pickle asked for something other than joblib's plain array records."""


def _array_unpickler():
    """joblib's own reader (it knows where each array's raw bytes follow its record),
    limited to the records a list of numeric arrays needs."""
    from joblib import numpy_pickle

    class ArraysOnly(numpy_pickle.NumpyUnpickler):
        dispatch = numpy_pickle.NumpyUnpickler.dispatch.copy()

        def find_class(self, module, name):
            if (module, name) not in _ALLOWED:
                raise UnsafeWeightsError(f"the weights pickle asks for {module}.{name}; only "
                                         "joblib array records are read")
            return super().find_class(module, name)

        def load_build(self):
            # joblib would read an object array with pickle.load, unrestricted: refuse it
            # before the bytes are read.
            pickle._Unpickler.load_build(self)
            wrapper = self.stack[-1]
            if isinstance(wrapper, numpy_pickle.NumpyArrayWrapper):
                dtype = np.dtype(wrapper.dtype)
                if dtype.hasobject or wrapper.subclass is not np.ndarray:
                    raise UnsafeWeightsError(f"the weights pickle holds a {dtype} "
                                             f"{wrapper.subclass.__name__}, not a numeric array")
                self.stack[-1] = wrapper.read(self, True)

        dispatch[pickle.BUILD[0]] = load_build

    return ArraysOnly


def read_arrays(compressed: bytes, name: str) -> List[np.ndarray]:
    """The list of arrays in one lz4-compressed joblib file (``name`` for errors)."""
    import lz4.frame

    try:
        data = lz4.frame.decompress(compressed)
    except RuntimeError as error:
        raise ValueError(f"{name} is not lz4-compressed: {error}") from None
    arrays = _array_unpickler()(name, io.BytesIO(data), ensure_native_byte_order=True).load()
    if not (isinstance(arrays, list) and all(isinstance(a, np.ndarray) for a in arrays)):
        raise ValueError(f"{name} does not hold a list of arrays")
    return arrays


def to_params(stage: str, arrays: List[np.ndarray]) -> Dict[str, np.ndarray]:
    """Flat ``layer/param`` arrays of one stage, named as models/mtcnn.py names them."""
    names = [(layer.replace("-", "_"), param) for layer in LAYERS[stage]
             for param in (("alpha",) if layer.startswith("prelu") else ("kernel", "bias"))]
    if len(names) != len(arrays):
        raise ValueError(f"{stage}: {len(arrays)} arrays, expected {len(names)}")
    return {f"{stage}/{layer}/{param}": np.asarray(a, np.float32)
            for (layer, param), a in zip(names, arrays)}


def arrays_digest(arrays: Dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def convert_wheel(wheel: str) -> Dict[str, np.ndarray]:
    """Every stage's arrays from the wheel, each member checked against its pin."""
    out = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for stage, (member, pinned) in MEMBERS.items():
                data = archive.read(member)
                digest = hashlib.sha256(data).hexdigest()
                if digest != pinned:
                    raise download.FetchError(
                        f"{member} in {wheel} has sha256 {digest}, not the pinned {pinned}: "
                        f"it is not the {PACKAGE} wheel's. Download the wheel again.")
                out.update(to_params(stage, read_arrays(data, member)))
    except (zipfile.BadZipFile, KeyError) as error:
        raise download.FetchError(f"{wheel} is not the {PACKAGE} wheel ({error}); download "
                                  f"it again with 'pip download --no-deps {PACKAGE}'.") from None
    return out


def cached_path(cache: Optional[str] = None) -> str:
    return os.path.join(cache or download.cache_dir(writable=False), "mtcnn", FILENAME)


def fetch(cache: Optional[str] = None, wheel: Optional[str] = None,
          say: Callable[[str], None] = lambda message: None) -> str:
    """Path of the converted, verified ``.npz`` in the cache, made from the wheel if needed.
    A cached file that fails its digest is moved aside with a warning and made again."""
    root, source = (cache, f"--cache_dir {cache}") if cache else download._cache_root()
    download.check_folder(root, source, writable=False)
    path = os.path.join(root, "mtcnn", FILENAME)
    digest = _file_arrays_digest(path) if os.path.isfile(path) else None
    if digest == ARRAYS_SHA256:
        return path
    download.check_folder(root, source)  # from here on the cache is written
    if digest:
        download.move_aside(path, digest, ARRAYS_SHA256, "MTCNN weights")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        if wheel is None:
            wheel = download.pip_download(PACKAGE, "2 MB", tmp, say,
                                          "'python scripts/align.py --mtcnn_wheel PATH_TO_WHL'")
        elif not os.path.isfile(wheel):
            raise download.FetchError(f"--mtcnn_wheel {wheel!r}: no such file.")
        arrays = convert_wheel(wheel)
        if arrays_digest(arrays) != ARRAYS_SHA256:
            raise download.FetchError(f"the arrays read from {wheel} are not the pinned ones "
                                      f"(digest {arrays_digest(arrays)}).")
        staged = os.path.join(tmp, FILENAME)
        np.savez(staged, **arrays)
        os.replace(staged, path)  # atomic: a reader never sees a half-written file
    say(f"saved {path}")
    return path


def _file_arrays_digest(path: str) -> str:
    """The arrays' digest of a cached ``.npz``; an unreadable file gives a digest that
    matches nothing, so it is moved aside and made again."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return arrays_digest({k: data[k] for k in data.files})
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return "unreadable:" + download.file_sha256(path)


def load(path: str) -> Dict[str, Dict]:
    """{stage: Flax params} from a converted ``.npz``, checked against the pin."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if arrays_digest(arrays) != ARRAYS_SHA256:
        raise ValueError(f"{path} does not hold the pinned MTCNN weights; delete it and run "
                         "again to rebuild it from the wheel.")
    params: Dict[str, Dict] = {}
    for key, value in arrays.items():
        stage, layer, param = key.split("/")
        params.setdefault(stage, {}).setdefault(layer, {})[param] = value
    return params
