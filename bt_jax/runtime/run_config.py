"""The config a run was started with, saved in its workdir and checked on resume and load.

A checkpoint only means something under the settings that shaped its state and the
meaning of its steps. Those must match when a run resumes (scripts/train.py) or is loaded
for evaluation (scripts/evaluate.py); logging and evaluation settings may change, and
``train.epochs`` may change with a warning (the schedule is recomputed from it).

A frozen trunk (``config.model.freeze_until``) is read from ``config.init`` again at every
resume and evaluation, so the path is not enough: the digest of the weights there is
recorded too, and weights replaced in that folder are refused.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

from bt_jax.runtime import workdir as workdir_files

FILE = workdir_files.CONFIG
# Dotted prefixes of the fields that shape the state or what a step means.
STATE_FIELDS = ("model.", "data.image_size", "data.normalization", "optim.batch_size",
                "optim.name", "num_devices", "reducer.name", "reducer.powersgd.rank")
# Under those prefixes but free to change: how a step is computed, not what it computes.
FREE_FIELDS = ("model.remat",)
# config.json's one key besides the config's fields: the digest of the converted weights a
# frozen trunk reads (pretrained.converted_digest). Only a frozen trunk's run records it:
# any other run keeps every weight it trains in its checkpoint, and reads config.init again
# only for the untrained step-0 baseline of a resume.
DIGEST = "init_digest"


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _state_fields(config) -> Dict[str, Any]:
    flat = flatten(json.loads(config.to_json()))
    chosen = {k: v for k, v in flat.items()
              if any(k == f or (f.endswith(".") and k.startswith(f)) for f in STATE_FIELDS)
              and k not in FREE_FIELDS}
    if flat.get("model.freeze_until"):
        chosen["init"] = flat.get("init")  # the frozen trunk's weights shape the inputs
    return chosen


def _frozen_weights(config) -> bool:
    """Whether the run reads a frozen trunk from converted weights in config.init."""
    return bool(config.model.get("freeze_until")) and config.init != "scratch"


def _init_digest(config) -> str:
    from bt_jax.weights.pretrained import converted_digest  # orbax: only when needed

    return converted_digest(config.init)


def save(config, workdir: str) -> str:
    """Write ``workdir/config.json`` atomically, with the frozen trunk's weights' digest."""
    record = json.loads(config.to_json())
    if _frozen_weights(config):
        record[DIGEST] = _init_digest(config)
    path = os.path.join(workdir, FILE)
    staging = f"{path}.tmp-{os.getpid()}"
    with open(staging, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    os.replace(staging, path)
    return path


def load(workdir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(workdir, FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from a backup, or "
                         "delete it to accept the current config as the run's.") from None


def differences(saved: Dict[str, Any], config) -> List[Tuple[str, Any, Any]]:
    """(field, saved value, current value) for each state-shaping field that changed."""
    class _Saved:  # the saved dict through the same field selection as a live config
        def to_json(self):
            return json.dumps(saved)

    old, new = _state_fields(_Saved()), _state_fields(config)
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def check(config, workdir: str, *, action: str) -> None:
    """Stop with every changed state field named if ``config`` does not match the run in
    ``workdir``; warn if train.epochs changed. ``action`` is 'resume' or 'load'."""
    saved = load(workdir)
    if saved is None:
        return
    changed = differences(saved, config)
    if changed:
        rows = "; ".join(f"{k}: run {old!r}, now {new!r}" for k, old, new in changed)
        raise ValueError(
            f"cannot {action} the run in {workdir}: its config ({FILE}) differs in fields "
            f"that shape the checkpoint or what a step means: {rows}. Either restore those "
            "values (pass the run's config), or use a new --workdir for the new settings.")
    _check_weights(saved, config, workdir, action)
    epochs = saved.get("train", {}).get("epochs")
    if action == "resume" and epochs is not None and epochs != config.train.epochs:
        warnings.warn(f"train.epochs changed from {epochs} to {config.train.epochs}: the "
                      "learning-rate schedule is recomputed for the new length from the "
                      "resumed step on.", stacklevel=2)


def _check_weights(saved: dict[str, Any], config, workdir: str, action: str) -> None:
    """Stop if the converted weights of the run's frozen trunk changed since it started:
    its head was trained on the activations of those, not of the new ones."""
    if not _frozen_weights(config):
        return
    recorded = saved.get(DIGEST)
    if recorded is None:  # a run started before digests were recorded
        warnings.warn(f"{os.path.join(workdir, FILE)} records no digest of the frozen trunk's "
                      f"weights in config.init={config.init!r}, so they cannot be checked "
                      "against the ones the run was trained on"
                      + ("; they are recorded now." if action == "resume" else "."),
                      stacklevel=3)
        return
    now = _init_digest(config)
    if now != recorded:
        raise ValueError(
            f"cannot {action} the run in {workdir}: the converted weights in "
            f"config.init={config.init!r} changed since the run started (digest {recorded} "
            f"then, {now} now), and its head was trained on the frozen trunk of the old "
            f"ones. Put the run's weights back in {config.init}, or train the new ones in a "
            "new --workdir.")
