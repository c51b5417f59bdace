"""Export the embedding function with its weights as a serialized ``jax.export`` artifact.

The exported function is the one the evaluator computes (``embedding.embed_step``):
uint8 aligned face crops (N, S, S, 3) -> float32 embeddings (N, D), not L2-normalised,
backbone features or projector embeddings as ``config.eval.embedding`` says, with the
frozen trunk in front when the config has one. The weights are constants of the
function, and the batch dimension is symbolic, so the artifact alone embeds any N on any
of its platforms. ``bt_jax.identify.exported.load_embedder`` reads it back without this module's
imports (model code, flax).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp

from bt_jax.network import embedding
from bt_jax.network.network import Network
from bt_jax.identify.exported import (EXPORT_FILES, FORMAT_VERSION, FUNCTION_FILE,
                                      INFO_FILE)

PLATFORMS = ("cpu", "cuda")
# What jax.export lowers for. It accepts any other name too (even "CPU") and the artifact
# then fails at its first call, far from the export.
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
INPUTS_NOTE = ("aligned face crops, prepared like the training images: uint8 RGB, "
               "(N, image_size, image_size, 3); scripts/align.py makes them from photos")


def export_embedder(config, variables: Dict[str, Any], out_dir: str, *,
                    platforms: Sequence[str] = PLATFORMS, overwrite: bool = False) -> str:
    """Write ``out_dir/embedder.bin`` and ``embedder.json``; return ``out_dir``.

    An existing non-empty ``out_dir`` is replaced only with ``overwrite=True``, and only
    if it holds an earlier export (nothing else is ever deleted).
    """
    check_out_dir(out_dir, overwrite)
    platforms = check_platforms(platforms)
    size = int(config.data.image_size)
    shape = jax.export.symbolic_shape(f"b, {size}, {size}, 3")
    exported = jax.export.export(jax.jit(Network(config).embed_function(variables)),
                                 platforms=platforms)(
        jax.ShapeDtypeStruct(shape, jnp.uint8))
    function = bytes(exported.serialize())
    info = {"format_version": FORMAT_VERSION, "inputs": INPUTS_NOTE,
            **embedding.preprocessing(config),
            "feature_dim": int(exported.out_avals[0].shape[-1]), "l2_normalized": False,
            "arch": config.model.arch, "freeze_until": config.model.get("freeze_until") or None,
            "fingerprint": embedding.fingerprint(config, variables),
            "jax_version": jax.__version__, "platforms": list(exported.platforms),
            # Ties the .json to this .bin: the loader refuses a .bin of another export.
            "function_sha256": hashlib.sha256(function).hexdigest()}
    write_files(out_dir, {FUNCTION_FILE: function,
                     INFO_FILE: (json.dumps(info, indent=2) + "\n").encode()})
    return out_dir


def check_platforms(platforms: Sequence[str]) -> tuple:
    """``platforms`` as a tuple, refused before the compile unless jax.export knows them."""
    platforms = tuple(platforms)
    if not platforms:
        raise ValueError(f"--platforms is empty; name one or more of "
                         f"{', '.join(KNOWN_PLATFORMS)} (default: {','.join(PLATFORMS)}).")
    for name in platforms:
        if name not in KNOWN_PLATFORMS:
            raise ValueError(f"--platforms: {name!r} is not a platform jax.export compiles "
                             f"for; use {', '.join(KNOWN_PLATFORMS)} (default: "
                             f"{','.join(PLATFORMS)}).")
    if len(set(platforms)) != len(platforms):
        raise ValueError(f"--platforms {','.join(platforms)} names a platform twice; name "
                         "each once.")
    return platforms


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse, before any work, an ``out_dir`` that cannot or must not be written."""
    if not out_dir:
        raise ValueError("the export folder is empty; name a folder for the embedder.")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"export folder {out_dir!r} is a file; name a folder.")
    _check_writable_parent(out_dir)
    existing = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    if existing and not overwrite:
        raise FileExistsError(f"export folder {out_dir!r} is not empty; pass --overwrite "
                              "(overwrite=True) to replace the export in it, or name a new "
                              "folder.")
    others = sorted(set(existing) - set(EXPORT_FILES))
    if others:
        raise FileExistsError(f"export folder {out_dir!r} holds {others[:3]}, not only an "
                              "earlier export; it is never deleted: name another folder.")


def _check_writable_parent(out_dir: str) -> None:
    """The export is staged beside ``out_dir`` and renamed into place, so the nearest
    existing folder above it must be a writable folder: found here, not after the
    compile."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"export folder {out_dir!r} is under {parent!r}, a file; name a "
                         "folder elsewhere.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"export folder {out_dir!r} cannot be written: {parent!r} is not "
                         "writable; name a folder you can write to.")


def write_files(out_dir: str, files: Dict[str, bytes]) -> None:
    """All files or none: written beside ``out_dir`` and renamed into place."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Beside the target, so the rename stays on one file system; makedirs honours umask.
    staging = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    old = None
    try:
        for name, data in files.items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        if os.path.isdir(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "export"))
        os.replace(staging, out_dir)
    except BaseException:
        if old and not os.path.exists(out_dir):
            os.replace(os.path.join(old, "export"), out_dir)  # put the earlier export back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old:
            shutil.rmtree(old, ignore_errors=True)
