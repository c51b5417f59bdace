"""The single named axis that every cross-device collective in bt_jax uses.

All traffic between devices goes through ``AXIS``: BatchNorm statistics, the
Barlow Twins cross-correlation, the gradient reducer and metric averaging.
Keeping it in one place makes the same per-device functions run under
``jax.pmap(..., axis_name=AXIS)`` and ``shard_map`` over a mesh axis of that name.
"""

AXIS = "devices"

import jax  # noqa: E402  (kept below the constant: the axis name is this module's point)
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402


def pmap_devices(num_devices: int):
    """The devices a pmap over ``num_devices`` runs on (None: all of them, every process)."""
    if jax.process_count() > 1:
        if num_devices != jax.device_count():
            raise ValueError(f"config.num_devices={num_devices} must equal the "
                             f"{jax.device_count()} devices of all {jax.process_count()} processes.")
        return None
    return jax.local_devices()[:num_devices]


def local_count(num_devices: int) -> int:
    """Devices of this process among the ``num_devices`` of the whole job."""
    return num_devices // jax.process_count()


def device_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh over this process's share of ``num_devices``, with a clear error if short."""
    devices = jax.local_devices()
    num_devices = local_count(num_devices)
    if num_devices > len(devices):
        raise ValueError(
            f"config.num_devices={num_devices} but only {len(devices)} {jax.default_backend()} "
            f"device(s) are visible. Lower --config.num_devices, or on CPU simulate devices "
            f"with XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} "
            "(scripts/train.py does this for you).")
    return Mesh(np.array(devices[:num_devices]), (AXIS,))


def replicate(tree, mesh: Mesh):
    """Copy a host pytree onto every device of ``mesh`` with a leading device axis."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
        tree)


def unreplicate(tree):
    """Device 0's copy of a replicated pytree, as host numpy arrays (no compilation)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def distribute(tree, mesh: Mesh):
    """Per-device host values (all devices of the job, stacked) onto this process's devices."""
    n = mesh.devices.size
    first = jax.process_index() * n
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x)[first:first + n], sharding), tree)


def local_values(x) -> np.ndarray:
    """A pmap output's rows on this process's devices, (local devices, ...), on the host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.concatenate([np.asarray(s.data) for s in x.addressable_shards])


def shard(batch, num_devices: int):
    """Split the leading (global batch) axis into (devices, per-device batch)."""
    def split(x):
        if x.shape[0] % num_devices:
            raise ValueError(f"a batch of {x.shape[0]} does not split over {num_devices} devices")
        return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])
    return jax.tree.map(split, batch)


# How long a closed prefetch waits for its thread to finish the batch it is making.
PREFETCH_JOIN_SECONDS = 60.0


def prefetch_to_devices(batches, mesh: Mesh, size: int):
    """Yield ``batches`` (host arrays, leading axis = ``mesh``'s devices) as jax.Arrays
    already on those devices, ``size`` ahead: a background thread gathers or decodes
    and copies the next batches while the current step runs. The one way training
    batches reach the devices, whichever loader made them.

    An error while making a batch is raised here, in order; closing the generator
    (the loop stopped early) stops the thread after the batch it is on.
    """
    import queue
    import threading

    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    ahead, stop, end = queue.Queue(maxsize=max(1, size)), threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for batch in batches:
                if not put(jax.device_put(batch, sharding)):
                    return
            put(end)
        except BaseException as error:  # noqa: BLE001 (re-raised in the consumer)
            put(error)

    thread = threading.Thread(target=produce, name="prefetch_to_devices", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Nothing of this loop may outlive it: a producer still copying while the caller
        # handles an error (or the interpreter exits) races with what runs next.
        thread.join(timeout=PREFETCH_JOIN_SECONDS)
