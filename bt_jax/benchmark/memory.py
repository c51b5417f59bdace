"""What one training step holds in memory, read off XLA's compiled train step.

No weights, data or steps run: the state and inputs are abstract (shapes only), the pmapped
train step is lowered and compiled as training compiles it, and XLA's memory analysis of
the executable says how many bytes its arguments, outputs and temporaries take on one
device. With simulated CPU devices all of them share the host's memory, so the process
needs about ``num_devices`` times the per-device figure, plus the data (the trunk cache).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any, Dict, Iterator, Sequence

import jax
import numpy as np

from bt_jax.network import embedding, trunk
from bt_jax.train import reducers
from bt_jax.train.optim import make_optimizer
from bt_jax.train.state import TrainState
from bt_jax.train.step import compile_steps


@dataclasses.dataclass
class StepMemory:
    """Bytes per device of one compiled train step."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # donated arguments that the outputs reuse

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased


def _abstract(tree, leading=()):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(leading + tuple(np.shape(x)),
                                                       np.result_type(x)), tree)


def abstract_state(config, tx, reducer) -> TrainState:
    """The TrainState of ``config`` as shapes, one copy per device in front."""
    variables = embedding.variable_shapes(config)
    params = variables["params"]
    n = (config.num_devices,)
    return TrainState(step=jax.ShapeDtypeStruct(n, np.int32),
                      params=_abstract(params, n),
                      batch_stats=_abstract(variables["batch_stats"], n),
                      opt_state=_abstract(jax.eval_shape(tx.init, params), n),
                      reducer_state=_abstract(jax.eval_shape(reducer.init, params), n),
                      rng=jax.ShapeDtypeStruct(n + (2,), np.uint32))


def step_memory(config) -> StepMemory:
    """Compile ``config``'s train step for abstract inputs and read its memory analysis."""
    tx, _ = make_optimizer(config, steps_per_epoch=1)
    reducer = reducers.make_reducer(config)
    steps = compile_steps(config, tx, reducer)
    shape, dtype = embedding.input_spec(config)
    per_device = config.optim.batch_size // config.num_devices
    views = jax.ShapeDtypeStruct((config.num_devices, 2, per_device) + shape, dtype)
    compiled = steps.train.lower(abstract_state(config, tx, reducer), views).compile()
    stats = compiled.memory_analysis()
    return StepMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                      stats.temp_size_in_bytes, stats.alias_size_in_bytes)


def parse_bool(flag: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"{flag}={value!r}: use true or false.")
    return value.lower() == "true"


def parse_batch(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--batches: {value!r} is not a positive whole number of pairs.")
    return int(value)


def sweep(config, splits: Sequence[str], batches: Sequence[int],
          remats: Sequence[bool]) -> Iterator[Dict[str, Any]]:
    """A report row per (split, batch, remat) setting of ``config``, after checking them
    all (a bad split or batch fails before the first compilation)."""
    settings = []
    for split, batch, remat in itertools.product(splits, batches, remats):
        variant = copy.deepcopy(config)
        variant.model.freeze_until, variant.model.remat = split, remat
        variant.optim.batch_size = batch
        trunk.check_split(variant)
        if batch % variant.num_devices:
            raise ValueError(f"batch {batch} does not split over {variant.num_devices} devices.")
        settings.append(variant)
    for variant in settings:
        yield report_row(variant, step_memory(variant))


def report_row(config, memory: StepMemory) -> Dict[str, Any]:
    gib = 2 ** 30
    return {"freeze_until": config.model.freeze_until, "remat": bool(config.model.remat),
            "batch": config.optim.batch_size, "dtype": config.model.dtype,
            "per_device_gib": round(memory.peak / gib, 3),
            "temporaries_gib": round(memory.temporaries / gib, 3),
            "all_devices_gib": round(memory.peak * config.num_devices / gib, 2)}


def format_row(row: Dict[str, Any]) -> str:
    return (f"split {row['freeze_until'] or '(none)':>10}  batch {row['batch']:>4}  "
            f"remat {str(row['remat']):>5}  {row['dtype']}: {row['per_device_gib']:.2f} GiB "
            f"per device ({row['temporaries_gib']:.2f} temporaries), "
            f"{row['all_devices_gib']:.1f} GiB for all devices")
