"""Streaming pairs: decode and resize in parallel grain workers, batch in the devices' layout.

Why grain: it is Google's data loader for JAX, kept up with JAX releases, and its
``MapDataset`` gives exactly what a resumable pair stream needs: random access by
position (so a resumed step reads the same images), order-preserving parallel
map (deterministic batches whatever the thread timing) and batching, without
TensorFlow. The batches go onto the devices through ``parallel.prefetch_to_devices``,
the same way as preloaded ones. Workers are
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
from bt_jax.data.pairs import PairSampler, check_start_step, device_layout

# Replacement pairs tried before giving up: with a tenth of the images corrupt a pair
# fails 19% of the time, and 16 failures in a row happen once in ~3e11 pairs.
MAX_ATTEMPTS = 16


def default_workers() -> int:
    """Decode threads: two per core (file reads wait on I/O, decoding does not)."""
    return min(16, 2 * (os.cpu_count() or 1))


class StreamingPairs(PairSampler):
    """Pairs of ``source`` (an ``ImageSource``) decoded on the fly; same API as PairDataset.

    ``workers``: decode threads (0: ``default_workers()``); ``prefetch``: batches
    decoded ahead of the consumer.
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
        pool, offset = host.reshape(-1, 2), start_step * local
        ds = grain.MapDataset.source(host[start_step:].reshape(-1, 2)).map_with_index(
            lambda pos, pair: self._load_pair(epoch, offset + pos, pair, pool))
        options = grain.ReadOptions(num_threads=self.workers,
                                    prefetch_buffer_size=self.prefetch * local)
        return ds.to_iter_dataset(options).batch(
            local, drop_remainder=True,
            batch_fn=lambda items: device_layout(np.stack(items), devices))

    def batches(self, epoch: int, global_batch: int, *, start_step: int = 0,
                devices: int = 1) -> Iterator[np.ndarray]:
        """This host's rows of each remaining batch of ``epoch``, uint8
        (devices, 2, per_device, S, S, 3), like ``PairDataset.batches``."""
        yield from self._progress(self._dataset(epoch, global_batch, start_step, devices),
                                  epoch)

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
