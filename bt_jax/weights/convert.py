"""Convert PyTorch weights of the VGGFace2 ResNet (or an earlier Barlow Twins run), or a
FaceNet frozen graph, to Flax.

Three sources are understood (read by ``bt_jax.weights.sources``):

* the VGGFace2 release pickle (``resnet50_ft_weight.pkl``, ``resnet50_scratch_weight.pkl``);
* a ``.pth`` checkpoint of the earlier PyTorch Barlow Twins model: ``{'model': state_dict}``
  with ``backbone.*``, ``projector.*`` and the loss's affine-free ``bn.*``;
* a FaceNet frozen TensorFlow graph (``bt_jax.weights.facenet``).

Each PyTorch entry is matched to its Flax leaf and checked by ``bt_jax.weights.slots``.
This module runs the conversion, records it in a manifest and saves it: the output folder
is what :func:`bt_jax.weights.pretrained.load_pretrained` reads, ``variables/`` (orbax) and
``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np

import bt_jax
from bt_jax.weights import facenet
from bt_jax.weights.download import file_sha256
from bt_jax.weights.slots import (check_keys, check_shapes, checked_float32, fill,
                                  projector_layout, split_extras, target_slots)
from bt_jax.weights.sources import read_torch_checkpoint, read_vggface2_pickle, source_kind
from bt_jax.data.preprocess import NORMALIZATIONS

# The preprocessing each source was trained with (presets of bt_jax.data.preprocess): the
# release's Caffe inputs, and the earlier Barlow Twins work's MLFW statistics.
DEFAULT_NORMALIZATION = {"release": "vggface2", "barlow": "mlfw", "graph": "facenet"}
# The backbone each kind of source converts to when --arch is not given.
DEFAULT_ARCH = {"pickle": "resnet50", "torch": "resnet50", "graph": "inception_resnet_v1"}


@dataclasses.dataclass
class Conversion:
    """Converted variables ``{'params': {part: tree}, 'batch_stats': ...}`` and their manifest."""

    variables: Dict[str, Dict[str, Any]]
    manifest: Dict[str, Any]


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
    if arch in facenet.FACENET_ARCHS:
        raise ValueError(f"--arch={arch} converts from a FaceNet frozen graph (*.pb); "
                         f"{source} is a {kind} file of a ResNet.")
    state = read_vggface2_pickle(source) if kind == "pickle" else read_torch_checkpoint(source)
    # A .pth of the backbone alone (torch.save of the ResNet) is laid out like the release.
    barlow = kind == "torch" and any(k.startswith("backbone.") for k in state)
    normalization = _normalization(normalization, barlow)
    backbone_prefix = "backbone." if barlow else ""
    dropped, ignored = split_extras(state, barlow, keep_fc, backbone_prefix)
    projector = projector_layout(state, source) if barlow else None
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
    variables, details = facenet.convert_graph(source, arch)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: checked_float32(a, jax.tree_util.keystr(p), source), variables)
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
