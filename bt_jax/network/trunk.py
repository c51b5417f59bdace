"""Frozen early layers cost nothing twice: their activations, computed once and cached.

With ``config.model.freeze_until`` set (e.g. ``'Mixed_7a'`` for FaceNet), the backbone is
split at that layer. The *trunk* (everything up to and including it) keeps the weights of
``config.init`` and runs in inference mode, so its output for an image never changes: it
is computed once per image and kept in a cache file, and the training state holds only
the *head* (the layers after it) and the projector. The trunk's activations take the
place of the images in the one input path (same samplers, train step, reducers,
checkpoints and evaluation); only the normalisation and image augmentation, which belong
to the trunk's input, are skipped.

The cache is keyed by everything its content depends on: the trunk's weights, the
decoded pixels of every image (so the image files, their order, size and resizing), the
normalisation preset, the architecture and the split layer. Any change gives another
key, so a stale file is never read. A file is trusted by its content, not its name: each
key's sidecar ``<key>.json`` holds the digest of the array, which lies in
``<key>.<digest>.npy``; a file that does not match (garbage, cut short, or written before
digests were kept) is recomputed with a warning that names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.weights import download
from bt_jax.data import preprocess
from bt_jax.models import inception_resnet, resnet
from bt_jax.models.inception_resnet import InceptionResNetV1
from bt_jax.models.backbones import create_backbone

INCEPTION_ARCHS = ("inception_resnet_v1", "tiny_inception")

# Cached activations are stored in float16: half the memory and disk of float32, and well
# inside the precision a fine-tuned head needs (relative error ~5e-4).
CACHE_DTYPE = np.float16
CACHE_VERSION = 1


def is_frozen(config) -> bool:
    return bool(config.model.get("freeze_until"))


def check_split(config) -> None:
    """The split layer must exist in the backbone, and only the Inception-ResNet splits."""
    if not is_frozen(config):
        return
    layer, arch = config.model.freeze_until, config.model.arch
    backbone = create_backbone(arch, config.model.pool_window)
    if not isinstance(backbone, InceptionResNetV1):
        raise ValueError(f"config.model.freeze_until={layer!r}: a frozen trunk is supported for "
                         "the Inception-ResNet backbones (inception_resnet_v1, tiny_inception), "
                         f"not config.model.arch={arch!r}.")
    if layer not in backbone.layer_names():
        raise ValueError(f"config.model.freeze_until={layer!r} is not a layer of {arch}; use one "
                         f"of {', '.join(backbone.layer_names()[:-1])}.")
    if config.init == "scratch":
        raise ValueError("config.model.freeze_until freezes pretrained layers, but "
                         "config.init='scratch' has none; convert weights first (docs/convert.md)"
                         " or clear freeze_until.")


def trunk_model(config) -> InceptionResNetV1:
    return create_backbone(config.model.arch, config.model.pool_window,
                           stop_after=config.model.freeze_until)


def trunk_variables(config) -> Dict[str, Any]:
    """The trunk's params and batch_stats from the converted weights of ``config.init``."""
    from bt_jax.weights.pretrained import read_converted

    loaded = read_converted(config.init)
    model = trunk_model(config)
    size = config.data.image_size
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                               train=False))
    out = {}
    for collection in ("params", "batch_stats"):
        backbone = loaded[collection]["backbone"]
        missing = sorted(set(shapes[collection]) - set(backbone))
        if missing:
            raise ValueError(f"config.init={config.init!r} lacks the trunk layers {missing}; "
                             "were the weights converted for config.model.arch?")
        out[collection] = {name: jax.tree.map(np.asarray, backbone[name])
                           for name in shapes[collection]}
    return out


def digest(arrays: Sequence[np.ndarray], extra: Dict[str, Any]) -> str:
    """sha256 (32 hex) of ``extra`` (JSON) and each array's shape, dtype and bytes."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for array in arrays:
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()[:32]


def cache_key(config, variables, images: np.ndarray) -> str:
    leaves = [np.asarray(x) for x in jax.tree.leaves(variables)]
    settings = {"version": CACHE_VERSION, "arch": config.model.arch,
                "freeze_until": config.model.freeze_until,
                "normalization": config.data.normalization,
                "weights": digest(leaves, {})}
    return digest([images], settings)


class CacheWriteError(OSError, ValueError):
    """A trunk cache file could not be written (a full disk, a cache folder that cannot be
    one). A ValueError too, so that the scripts report it in one line like bad input."""


def _write_error(path: str, error: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write the frozen trunk's cache file {path}: {error.strerror or error}. Free "
        "space on that disk, or point config.data.trunk_cache_dir (or the BT_JAX_CACHE "
        "environment variable) at a writable folder on another one.")


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _staged_write(path: str, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a staging file renamed into place, so that a reader sees all
    of it or none. On any failure the staging file is removed: a full disk must not be
    kept full by what failed to fit."""
    staging = f"{path}.tmp-{os.getpid()}"
    try:
        with open(staging, "wb") as f:
            write(f)
        os.replace(staging, path)
    except BaseException as error:  # an interrupt too: nothing half-written stays
        _remove(staging)
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise


def forward(model, variables, images, config):
    """uint8 images -> the trunk's activations, rounded to the cache's float16: what the
    head trains and is evaluated on, whether cached or computed in one function."""
    x = preprocess.normalize(images, config.data.normalization)
    return model.apply(variables, x, train=False).astype(CACHE_DTYPE)


class Trunk:
    """The frozen trunk of ``config``: activations of uint8 images, cached on disk."""

    def __init__(self, config, *, cache_dir: Optional[str] = None, progress: bool = True):
        self.config, self.progress = config, progress
        self.model = trunk_model(config)
        self.variables = trunk_variables(config)
        root = cache_dir or config.data.get("trunk_cache_dir") or download.cache_dir()
        self.cache_dir = os.path.join(root, "trunk")
        # One image batch split over the local devices: on a CPU with simulated devices
        # that is what keeps every core busy.
        self.devices = jax.local_devices()[:max(1, min(config.num_devices,
                                                       jax.local_device_count()))]
        self._apply = jax.pmap(self._forward, in_axes=(None, 0), devices=self.devices)

    def _forward(self, variables, images):
        return forward(self.model, variables, images, self.config)

    def compute(self, images: np.ndarray, per_device: int = 8) -> np.ndarray:
        """Activations of ``images`` (uint8 N x S x S x 3), batch by batch (the last one
        padded to keep one compiled shape)."""
        from tqdm.auto import tqdm

        n = len(self.devices)
        batch = n * per_device
        out = []
        for start in tqdm(range(0, len(images), batch), desc="frozen trunk", unit="batch",
                          disable=not self.progress):
            chunk = images[start:start + batch]
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            acts = np.asarray(self._apply(self.variables, chunk.reshape(
                (n, per_device) + chunk.shape[1:])))
            out.append(acts.reshape((batch,) + acts.shape[2:])[:batch - pad])
        if not out:
            raise ValueError("no images to run through the frozen trunk.")
        return np.concatenate(out)

    def activations(self, images: np.ndarray, name: str = "images", *,
                    write: bool = True) -> tuple[np.ndarray, str]:
        """(activations, cache file) of ``images``: read from the cache when its file
        matches its digest, else computed and, if ``write``, cached (else the file is '')."""
        key = cache_key(self.config, self.variables, images)
        cached, path = self._read(key, len(images))
        if cached is not None:
            return cached, path
        acts = self.compute(images)
        return acts, (self._write(key, acts, name, stale=path) if write else "")

    def _sidecar(self, key: str) -> dict[str, Any] | None:
        """The sidecar of ``key``: None if there is none, {} if it cannot be read."""
        try:
            with open(os.path.join(self.cache_dir, f"{key}.json")) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _read(self, key: str, count: int) -> tuple[np.ndarray | None, str | None]:
        """(activations, file) if ``key``'s file matches the digest in its sidecar; else
        (None, the bad file or None), with a warning that names a bad file."""
        meta, legacy = self._sidecar(key), os.path.join(self.cache_dir, f"{key}.npy")
        if meta is None and not os.path.exists(legacy):
            return None, None  # never computed
        name = (meta or {}).get("file")
        if not (isinstance(name, str) and name == os.path.basename(name) and meta.get("digest")):
            bad = legacy if os.path.exists(legacy) else os.path.join(self.cache_dir, f"{key}.json")
            return _rejected(bad, "has no digest to check it against (written before "
                                  "digests were kept, or its sidecar is damaged)")
        path = os.path.join(self.cache_dir, name)
        try:
            acts = np.load(path)  # no pickles: a cache file cannot run code
        except (OSError, ValueError, EOFError) as error:
            return _rejected(path, f"cannot be read ({error})")
        if len(acts) != count or digest([acts], {}) != meta["digest"]:
            return _rejected(path, "does not match the digest written with it")
        return acts, path

    def _write(self, key: str, acts: np.ndarray, name: str, stale: str | None) -> str:
        """Cache ``acts`` under ``key``: the array in a file named by its digest, then the
        sidecar with that digest, which commits the pair. Each is renamed into place, so a
        concurrent reader finds the old pair or the new one, never half of one."""
        check = digest([acts], {})
        path = os.path.join(self.cache_dir, f"{key}.{check[:16]}.npy")
        meta_path = os.path.join(self.cache_dir, f"{key}.json")
        meta = {"what": name, "images": len(acts), "shape": list(acts.shape),
                "arch": self.config.model.arch, "freeze_until": self.config.model.freeze_until,
                "init": self.config.init, "file": os.path.basename(path), "digest": check}
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as error:
            raise _write_error(path, error) from None
        _staged_write(path, lambda f: np.save(f, acts))
        try:
            _staged_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
        except BaseException:
            _remove(path)  # an array without its sidecar is never read: free its space
            raise
        for old in {stale, os.path.join(self.cache_dir, f"{key}.npy")} - {None, path, meta_path}:
            _remove(old)  # the rejected file, and one from before digests were kept
        return path


def _rejected(path: str, why: str) -> tuple[None, str]:
    warnings.warn(f"frozen trunk cache file {path} {why}: it is recomputed.", stacklevel=4)
    return None, path


def head_settings(config) -> Dict[str, Any]:
    """Backbone constructor arguments for config.model's Inception-ResNet options."""
    if config.model.arch not in INCEPTION_ARCHS:
        return {}
    m = config.model
    return {"output": m.output, "start_after": m.freeze_until or None,
            "frozen_bn": m.bn_mode == "inference"}


def input_shape(config) -> Tuple[int, ...]:
    """The shape of one network input: an image, or the trunk's activations of one."""
    size = config.data.image_size
    if not is_frozen(config):
        return (size, size, 3)
    model = trunk_model(config)
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)[0])
    return tuple(out.shape[1:])


# ----------------------------------------------------------------------------------------
# BatchNorm recalibration of the layers that train.


def _bn_inputs(intermediates, path=()):
    """{path of a BatchNorm: its input} for every conv/dense followed by a BatchNorm."""
    found = {}
    for name, value in intermediates.items():
        if name in ("conv", "dense") and "__call__" in value:
            found[path + ("BatchNorm",)] = value["__call__"][0]
        elif isinstance(value, dict) and name != "__call__":
            found.update(_bn_inputs(value, path + (name,)))
    return found


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def bn_epsilon(config) -> float:
    """The BatchNorm epsilon of config.model.arch's layers."""
    if config.model.arch in INCEPTION_ARCHS:
        return inception_resnet.BN_EPSILON
    return resnet.BN_EPSILON


def recalibrate_batchnorm(config, model, params, batch_stats, inputs) -> Tuple[Any, Any]:
    """Set each backbone BatchNorm's running statistics to the mean m and variance v of its
    input over ``inputs``, changing scale and bias so that the inference-mode function is
    unchanged: scale' = scale * sqrt(v + eps) / sqrt(var + eps),
    bias' = bias + (m - mean) * scale / sqrt(var + eps). For a folded BN (scale 1, mean 0,
    var 1 - eps) that is scale sqrt(v + eps), bias offset + m. Batch statistics in training
    then start close to the running ones, instead of normalising away what the folded
    layer had learned.
    """
    import flax.linen as nn

    eps = bn_epsilon(config)
    variables = {"params": params, "batch_stats": batch_stats}
    _, state = model.apply(variables, inputs, train=False, method=model.features,
                           capture_intermediates=lambda m, _: isinstance(m, (nn.Conv, nn.Dense)))
    found = _bn_inputs(state["intermediates"]["backbone"])
    params = jax.tree.map(np.asarray, params)
    batch_stats = jax.tree.map(np.array, batch_stats)
    for path, x in found.items():
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        m, v = x.mean(0), x.var(0)
        bn_p, bn_s = _get(params["backbone"], path), _get(batch_stats["backbone"], path)
        gain = bn_p["scale"] / np.sqrt(bn_s["var"] + eps)
        bn_p["bias"] = (bn_p["bias"] + (m - bn_s["mean"]) * gain).astype(np.float32)
        bn_p["scale"] = (gain * np.sqrt(v + eps)).astype(np.float32)
        bn_s["mean"], bn_s["var"] = m.astype(np.float32), v.astype(np.float32)
    return params, batch_stats
