"""Streaming pairs: decode and resize in parallel grain workers, batch, prefetch to devices.

Why grain: it is Google's data loader for JAX, kept up with JAX releases, and its
``MapDataset`` gives exactly what a resumable pair stream needs: random access by
position (so a resumed step reads the same images), order-preserving parallel
map (deterministic batches whatever the thread timing), batching and device
prefetch (``grain.experimental.device_put``), without TensorFlow. Workers are
threads, not processes: Pillow releases the GIL while decoding and resizing,
threads share the read-only source (files or a TFDS ArrayRecord source) for
free, and on a 2-core host processes would only add pickling.

Host work is decode + resize to ``image_size`` only; augmentation runs on the
device inside the train step (``bt_jax.data.augment``), where it is cheap next
to a ResNet-50 and does not compete with decoding for the few host cores.

A corrupt or unreadable image never stops an epoch: it is skipped with a
warning (once per file) and counted in ``skipped``, and its pair is replaced by
another pair of the same epoch drawn from (seed, epoch, position), so batch
shapes, steps per epoch and resumed runs stay exactly as without the failure.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator

import grain
import numpy as np

from bt_jax.data.folder import SkippingDecoder
from bt_jax.data.pairs import PairSampler, check_start_step

# Replacement pairs tried before giving up: with a tenth of the images corrupt a pair
# fails 19% of the time, and 16 failures in a row happen once in ~3e11 pairs.
MAX_ATTEMPTS = 16


def default_workers() -> int:
    """Decode threads: two per core (file reads wait on I/O, decoding does not)."""
    return min(16, 2 * (os.cpu_count() or 1))


def _assemble(items, devices: int) -> np.ndarray:
    """(2, S, S, 3) pairs -> one (devices, 2, per_device, S, S, 3) array, filled in place
    (one copy, instead of stacking and then transposing the whole batch)."""
    per_device = len(items) // devices
    out = np.empty((devices, 2, per_device) + items[0].shape[1:], np.uint8)
    for k, item in enumerate(items):
        out[k // per_device, :, k % per_device] = item
    return out


class StreamingPairs(PairSampler):
    """Pairs of ``source`` (an ``ImageSource``) decoded on the fly; same API as PairDataset.

    ``workers``: decode threads (0: ``default_workers()``); ``prefetch``: batches
    decoded ahead of the consumer (and kept on the devices by ``sharded_batches``).
    """

    def __init__(self, source, image_size: int, *, seed: int, pair_sampler: str = "standard",
                 workers: int = 0, prefetch: int = 2, process_index: int | None = None,
                 process_count: int | None = None, progress: bool = False):
        if image_size < 1 or workers < 0 or prefetch < 1:
            raise ValueError(f"image_size={image_size}, workers={workers} and "
                             f"prefetch={prefetch} must be >= 1, >= 0 and >= 1 "
                             "(config.data.image_size / workers / prefetch).")
        super().__init__(source.records, seed=seed, pair_sampler=pair_sampler)
        self.source, self.image_size = source, int(image_size)
        self.workers, self.prefetch = workers or default_workers(), int(prefetch)
        self.process_index, self.process_count = process_index, process_count
        self.progress = progress
        self._decode = SkippingDecoder(source.read, [r.path for r in source.records],
                                       self.image_size, on_skip=self._skip)
        self.skipped = self._decode.skipped   # record path -> error, for the whole run

    # ------------------------------------------------------------------ images

    def _image(self, index: int) -> np.ndarray:
        return self._decode(index)

    @staticmethod
    def _skip(name: str, why: str, count: int) -> None:
        warnings.warn(f"skipped unreadable image {name} ({why}); {count} skipped so "
                      "far. Its pairs are replaced by other pairs of the epoch; list it "
                      "in config.data.exclude_file (scripts/clean_data.py) to stop "
                      "decoding it.", stacklevel=2)

    def _load_pair(self, epoch: int, position: int, pair, pool: np.ndarray) -> np.ndarray:
        """uint8 (2, S, S, 3) of ``pair``, or of a replacement drawn from ``pool``."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return np.stack([self._image(int(pair[0])), self._image(int(pair[1]))])
            except ValueError:
                rng = np.random.default_rng((self.seed, epoch, position, attempt))
                pair = pool[rng.integers(len(pool))]
        raise RuntimeError(
            f"{MAX_ATTEMPTS} pairs in a row were unreadable at epoch {epoch}, position "
            f"{position} ({len(self.skipped)} images skipped so far, e.g. "
            f"{next(iter(self.skipped), '?')}). Check the data folder, then run "
            "scripts/clean_data.py and set config.data.exclude_file.")

    # ----------------------------------------------------------------- batches

    def _dataset(self, epoch: int, global_batch: int, start_step: int, devices: int):
        """grain IterDataset of uint8 (devices, 2, per_device, S, S, 3) host batches."""
        steps = self.steps_per_epoch(global_batch)
        check_start_step(start_step, steps, global_batch)
        host = self.host_pairs(epoch, global_batch, process_index=self.process_index,
                               process_count=self.process_count)
        local = host.shape[1]
        if local % devices:
            raise ValueError(f"this host's batch of {local} pairs does not split over "
                             f"{devices} devices; make config.optim.batch_size a multiple "
                             "of the device count.")
        pool, offset = host.reshape(-1, 2), start_step * local
        ds = grain.MapDataset.source(host[start_step:].reshape(-1, 2)).map_with_index(
            lambda pos, pair: self._load_pair(epoch, offset + pos, pair, pool))
        options = grain.ReadOptions(num_threads=self.workers,
                                    prefetch_buffer_size=self.prefetch * local)
        return ds.to_iter_dataset(options).batch(
            local, drop_remainder=True, batch_fn=lambda items: _assemble(items, devices))

    def batches(self, epoch: int, global_batch: int, *,
                start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(view1, view2) uint8 (global_batch / process_count, S, S, 3), like PairDataset."""
        for batch in self._progress(self._dataset(epoch, global_batch, start_step, 1), epoch):
            yield batch[0, 0], batch[0, 1]

    def sharded_batches(self, epoch: int, global_batch: int, mesh, *, start_step: int = 0):
        """jax.Arrays (devices, 2, per_device, S, S, 3) already on ``mesh``'s devices
        (the layout of ``train.shard_views``), ``prefetch`` batches ahead.

        ``mesh`` spans this process's devices: each process feeds its own rows.
        """
        from jax.sharding import NamedSharding, PartitionSpec

        from bt_jax.parallel import AXIS

        ds = self._dataset(epoch, global_batch, start_step, mesh.devices.size)
        ds = grain.experimental.device_put(
            ds, NamedSharding(mesh, PartitionSpec(AXIS)), cpu_buffer_size=self.prefetch,
            device_buffer_size=self.prefetch)
        yield from self._progress(ds, epoch)

    def _progress(self, batches, epoch: int):
        """A 'decode' bar (images/s, skipped) under the training bar when progress is on."""
        from tqdm.auto import tqdm

        with tqdm(desc=f"decode epoch {epoch}", unit="img", unit_scale=True, leave=False,
                  position=1, disable=not self.progress, dynamic_ncols=True) as bar:
            for batch in batches:
                bar.update(int(np.prod(batch.shape[:3])))
                if self.skipped:
                    bar.set_postfix(skipped=len(self.skipped))
                yield batch
