"""Convert PyTorch weights of the VGGFace2 ResNet (or an earlier Barlow Twins run) to Flax.

Two sources are understood:

* the VGGFace2 release pickle (``resnet50_ft_weight.pkl``, ``resnet50_scratch_weight.pkl``):
  a plain pickle of ``{PyTorch name: numpy array}``, read with ``encoding='latin1'``;
* a ``.pth`` checkpoint of the earlier PyTorch Barlow Twins model: ``{'model': state_dict}``
  with ``backbone.*``, ``projector.*`` and the loss's affine-free ``bn.*`` (keys may start
  with ``module.``), read with ``torch.load(weights_only=True)``.

The target tree comes from ``jax.eval_shape`` of the Flax model's init, so every check runs
before any weight is copied and no real initialisation is needed. The output folder is what
:func:`bt_jax.pretrained.load_pretrained` reads: ``variables/`` (orbax) and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import bt_jax
from bt_jax import convert_facenet
from bt_jax.models import ARCHS, Projector
from bt_jax.preprocess import NORMALIZATIONS

PICKLE_SUFFIXES = (".pkl", ".pickle")
GRAPH_SUFFIXES = (".pb",)
TORCH_SUFFIXES = (".pth", ".pt")
ZIP_MAGIC = b"PK\x03\x04"
# torch.save's pre-1.6 format starts with this pickled integer.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
# The release's fc expects the 2048 features of a 224x224 input (7x7 map, 7x7 pool).
FC_IMAGE_SIZE = 224
# The preprocessing each source was trained with (presets of bt_jax.preprocess): the
# release's Caffe inputs, and the earlier Barlow Twins work's MLFW statistics.
DEFAULT_NORMALIZATION = {"release": "vggface2", "barlow": "mlfw", "graph": "facenet"}
# The backbone each kind of source converts to when --arch is not given.
DEFAULT_ARCH = {"pickle": "resnet50", "torch": "resnet50", "graph": "inception_resnet_v1"}
# Only what a pickle of numpy arrays needs; anything else in the file is refused.
_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}
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


@dataclasses.dataclass
class Conversion:
    """Converted variables ``{'params': {part: tree}, 'batch_stats': ...}`` and their manifest."""

    variables: Dict[str, Dict[str, Any]]
    manifest: Dict[str, Any]


# ----------------------------------------------------------------------------------------
# Reading the source file.


def source_kind(path: str) -> str:
    """'pickle', 'torch' or 'graph' (a frozen TensorFlow GraphDef of FaceNet), from the
    file name, or for other names from the first bytes; the content is checked when read."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in GRAPH_SUFFIXES or convert_facenet.is_graphdef(path):
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


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# The target: Flax leaves from eval_shape, each named by its PyTorch key.


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


def _split_extras(state: Dict[str, np.ndarray], barlow: bool, keep_fc: bool, fc_prefix: str):
    """Pop the entries that are known and not converted: (dropped names, ignored count)."""
    ignored = [k for k in state if k.endswith("num_batches_tracked")]
    drop = [] if keep_fc else [k for k in state if k.startswith(fc_prefix + "fc.")]
    if barlow:
        # The loss's affine-free BatchNorm of the embeddings: bt_jax normalises in the loss.
        drop += [k for k in ("bn.running_mean", "bn.running_var") if k in state]
    for key in ignored + drop:
        state.pop(key)
    return sorted(drop), len(ignored)


def _projector_layout(state: Dict[str, np.ndarray], path: str) -> Optional[Tuple[int, ...]]:
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


def _checked_float32(array: np.ndarray, key: str, path: str) -> np.ndarray:
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
        array = _checked_float32(state.pop(slot.torch_key), slot.torch_key, path)
        node = variables[slot.collection]
        for name in slot.path[:-1]:
            node = node.setdefault(name, {})
        node[slot.path[-1]] = slot.to_flax(array)
    return variables


# ----------------------------------------------------------------------------------------
# The whole conversion and its output folder.


def convert(source: str, arch: Optional[str] = None, keep_fc: bool = False,
            normalization: Optional[str] = None) -> Conversion:
    """Read ``source`` (VGGFace2 ``.pkl``, Barlow Twins ``.pth`` or FaceNet ``.pb``) and
    convert it for ``arch`` (default: the architecture of that kind of source).

    ``keep_fc`` keeps the classifier as ``params['backbone']['fc']`` for a model built with
    ``num_classes``; by default it is dropped (and named in the manifest).
    """
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--source {source!r}: no such file.")
    kind = source_kind(source)
    arch = arch or DEFAULT_ARCH[kind]
    if kind == "graph":
        return _convert_graph(source, arch, keep_fc, normalization)
    if arch in convert_facenet.FACENET_ARCHS:
        raise ValueError(f"--arch={arch} converts from a FaceNet frozen graph (*.pb); "
                         f"{source} is a {kind} file of a ResNet.")
    state = read_vggface2_pickle(source) if kind == "pickle" else read_torch_checkpoint(source)
    # A .pth of the backbone alone (torch.save of the ResNet) is laid out like the release.
    barlow = kind == "torch" and any(k.startswith("backbone.") for k in state)
    normalization = _normalization(normalization, barlow)
    backbone_prefix = "backbone." if barlow else ""
    dropped, ignored = _split_extras(state, barlow, keep_fc, backbone_prefix)
    projector = _projector_layout(state, source) if barlow else None
    num_classes = _num_classes(state, backbone_prefix, source) if keep_fc else None
    slots = target_slots(arch, num_classes, projector,
                         (("backbone", backbone_prefix), ("projector", "projector.")))
    check_keys(state, slots, source, arch)
    check_shapes(state, slots, source, arch)
    variables = fill(state, slots, source)
    source_format = ("Barlow Twins checkpoint (.pth)" if barlow else "VGGFace2 release pickle"
                     if kind == "pickle" else "ResNet state dict (.pth)")
    return Conversion(variables, _manifest(source, source_format, arch, num_classes, projector,
                                           normalization, slots, dropped, ignored))


def _convert_graph(source: str, arch: str, keep_fc: bool,
                   normalization: Optional[str]) -> Conversion:
    if keep_fc:
        raise ValueError(f"--keep_fc: {source} is a FaceNet graph, which has no classifier.")
    variables, details = convert_facenet.convert_graph(source, arch)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: _checked_float32(a, jax.tree_util.keystr(p), source), variables)
    normalization = _normalization(normalization, kind="graph")
    leaves = jax.tree_util.tree_leaves(variables["params"])
    manifest = _manifest_base(source, "FaceNet frozen graph (.pb)", arch, normalization)
    manifest["architecture"]["embedding_size"] = details.pop("embedding_size")
    manifest["converted"] = {
        "parts": ["backbone"], "params": sum(int(a.size) for a in leaves),
        "arrays": {c: len(jax.tree_util.tree_leaves(variables[c]))
                   for c in ("params", "batch_stats")}}
    manifest["graph"] = details
    manifest["dropped"] = []
    return Conversion(variables, manifest)


def _normalization(name: Optional[str], barlow: bool = False, kind: str = "") -> str:
    name = name or DEFAULT_NORMALIZATION[kind or ("barlow" if barlow else "release")]
    if name not in NORMALIZATIONS:
        raise ValueError(f"--normalization={name!r} is unknown; use one of "
                         f"{sorted(NORMALIZATIONS)}.")
    return name


def _num_classes(state: Dict[str, np.ndarray], prefix: str, path: str) -> int:
    weight = state.get(prefix + "fc.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError(f"--keep_fc: {path} has no 2-D {prefix}fc.weight to keep; convert "
                         "without --keep_fc.")
    return int(weight.shape[0])


def _manifest_base(source, source_format, arch, normalization) -> Dict[str, Any]:
    return {
        "source": {"file": os.path.basename(source), "sha256": file_sha256(source),
                   "bytes": os.path.getsize(source), "format": source_format},
        "architecture": {"arch": arch},
        "normalization": normalization,
        "bt_jax_version": bt_jax.__version__,
    }


def _manifest(source, source_format, arch, num_classes, projector, normalization, slots, dropped,
              ignored) -> Dict[str, Any]:
    parts = sorted({slot.path[0] for slot in slots})
    manifest = _manifest_base(source, source_format, arch, normalization)
    manifest["architecture"].update({
        "num_classes": num_classes,
        # The value for config.model.projector, and the backbone feature length it needs.
        "projector": "-".join(map(str, projector[1:])) if projector else None,
        "projector_in_features": projector[0] if projector else None})
    manifest["converted"] = {
        "parts": parts,
        "params": sum(int(np.prod(s.shape)) for s in slots if s.collection == "params"),
        "arrays": {c: sum(s.collection == c for s in slots) for c in ("params", "batch_stats")}}
    manifest["dropped"] = dropped
    manifest["ignored_num_batches_tracked"] = ignored
    return manifest


def _refuse_existing(out: str, overwrite: bool, source: Optional[str] = None) -> None:
    if source is not None:
        src = os.path.realpath(source)
        if src == os.path.realpath(out) or src.startswith(os.path.realpath(out) + os.sep):
            raise ValueError(f"--out {out!r} is or contains --source {source!r}; write the "
                             "conversion to another folder.")
    if not os.path.exists(out):
        return
    if not overwrite:
        raise FileExistsError(f"--out {out!r} already exists; pass --overwrite to replace it.")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        raise ValueError(f"--out {out!r} exists and is not a conversion (no manifest.json); "
                         "--overwrite only replaces an earlier conversion. Choose another "
                         "--out or move that folder yourself.")


def save(conversion: Conversion, out: str, overwrite: bool = False) -> str:
    """Write ``out/variables`` (orbax) and ``out/manifest.json`` as one atomic step.

    Everything goes to a sibling staging folder that is renamed into place at the end, so
    an interrupted run never leaves a half-written ``out`` for training to pick up.
    """
    import orbax.checkpoint as ocp  # slow import, only needed here

    out = os.path.abspath(out)
    _refuse_existing(out, overwrite)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging, old = f"{out}.tmp-{os.getpid()}", f"{out}.old-{os.getpid()}"
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(staging, "variables"), conversion.variables)
        checkpointer.wait_until_finished()
        checkpointer.close()
        with open(os.path.join(staging, "manifest.json"), "w") as f:
            json.dump(conversion.manifest, f, indent=2)
            f.write("\n")
        replacing = os.path.exists(out)
        if replacing:
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except OSError:
            if replacing:  # put the previous conversion back rather than lose it
                os.rename(old, out)
            raise
        if replacing:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def convert_file(source: str, out: str, arch: Optional[str] = None, keep_fc: bool = False,
                 overwrite: bool = False, normalization: Optional[str] = None) -> Dict[str, Any]:
    """Convert ``source`` into the folder ``out``; returns the manifest."""
    _refuse_existing(os.path.abspath(out), overwrite, source)  # fail before the slow part
    conversion = convert(source, arch=arch, keep_fc=keep_fc, normalization=normalization)
    save(conversion, out, overwrite=overwrite)
    return conversion.manifest


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
