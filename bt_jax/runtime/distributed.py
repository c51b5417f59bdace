"""Multi-process JAX: start-up, this process's share of a batch, and host-side agreement.

bt_jax uses JAX's own runtime (``jax.distributed``), not a home-made one. With several
processes every global batch is cut into contiguous per-process slices in process order,
which is the order pmap lays the global devices out in, so N processes compute exactly
what one process with all the devices would.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

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


@contextlib.contextmanager
def held_by_primary(acquire: Callable[[], object], release: Callable[[object], None],
                    refused: type) -> Iterator[None]:
    """Process 0 takes a lock (``acquire`` raises ``refused`` when it cannot) and every
    process learns the outcome, so that all stop together instead of the others waiting
    at their first collective for a process 0 that has exited."""
    held, refusal = None, ""
    if is_primary():
        try:
            held = acquire()
        except refused as e:
            refusal = str(e)
    if any_process(bool(refusal)):
        raise refused(refusal or "process 0 could not take the run's lock (its error "
                      "names the holder); this process stops with it")
    try:
        yield
    finally:
        if held is not None:
            release(held)
