"""Resolve the configured data source into folders of the ``Name/Name_SSSS_VVVV.jpg`` layout."""

from __future__ import annotations

import os
import shutil
from typing import Dict

from bt_jax.data.synthetic import write_synthetic_dataset


def _write_once(root: str, **kwargs) -> str:
    """Generate a synthetic split unless a complete one exists; atomic via rename."""
    if os.path.exists(os.path.join(root, "masked.txt")):
        return root
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_synthetic_dataset(tmp, **kwargs)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def synthetic_dirs(config, workdir: str) -> Dict[str, str]:
    """Train, val and eval splits of disjoint synthetic identities under ``workdir``."""
    syn = config.data.synthetic
    common = dict(sources_per_identity=syn.sources_per_identity,
                  masked_variants=syn.masked_variants, image_size=config.data.image_size,
                  seed=syn.seed, progress=config.train.progress)
    root = os.path.join(workdir, "synthetic_data")
    first = 0
    dirs = {}
    for split in ("train", "val", "eval"):
        count = syn[f"{split}_identities"]
        dirs[split] = _write_once(os.path.join(root, split), num_identities=count,
                                  first_identity=first, **common)
        first += count
    return dirs


def data_dirs(config, workdir: str) -> Dict[str, str]:
    """{'train', 'val', 'eval'} folders for ``config.data.source``."""
    source = config.data.source
    if source == "synthetic":
        return synthetic_dirs(config, workdir)
    if source == "folder":
        return {"train": config.data.train_dir, "val": config.data.val_dir,
                "eval": config.data.eval_dir or config.data.val_dir}
    raise ValueError(f"config.data.source={source!r} is unknown; use 'folder' or 'synthetic'.")
