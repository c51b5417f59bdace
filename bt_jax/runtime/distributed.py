"""Multi-process JAX: start-up, this process's share of a batch, and host-side agreement.

bt_jax uses JAX's own runtime (``jax.distributed``), not a home-made one. With several
processes every global batch is cut into contiguous per-process slices in process order,
which is the order pmap lays the global devices out in, so N processes compute exactly
what one process with all the devices would.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(config) -> None:
    """Start ``jax.distributed`` from ``config.distributed`` or a detected SLURM job."""
    dist = config.distributed
    if dist.coordinator_address:
        if dist.num_processes is None or dist.process_id is None:
            raise ValueError("config.distributed.coordinator_address is set: also set "
                             "config.distributed.num_processes and config.distributed.process_id.")
        _use_cpu_collectives(dist.cpu_collectives)
        jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                                   num_processes=dist.num_processes, process_id=dist.process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # JAX reads the coordinator, process count and id from the SLURM environment.
        _use_cpu_collectives(dist.cpu_collectives)
        jax.distributed.initialize()


def _use_cpu_collectives(name: str) -> None:
    # Cross-process collectives on the CPU backend need an implementation; GPUs use NCCL.
    if name:
        jax.config.update("jax_cpu_collectives_implementation", name)


def is_primary() -> bool:
    """Metrics, progress bars and results files are written by process 0 only."""
    return jax.process_index() == 0


def process_rows(x: np.ndarray) -> np.ndarray:
    """This process's contiguous slice of a global batch (leading axis)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return x
    if len(x) % count:
        raise ValueError(f"a batch of {len(x)} does not split over {count} processes")
    share = len(x) // count
    return x[index * share:(index + 1) * share]


def gather_rows(x: np.ndarray) -> np.ndarray:
    """Concatenate every process's rows in process order (inverse of process_rows)."""
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def any_process(flag: bool) -> bool:
    """True on every process if any process says True (e.g. a stop signal)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
