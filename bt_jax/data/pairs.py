"""Positive pairs (two images of one identity) for Barlow Twins, seeded per epoch.

Three samplers (``config.data.pair_sampler``):

* ``'standard'``: one pair per identity per epoch;
* ``'all_pairs'``: floor(n / 2) disjoint pairs per identity per epoch;
* ``'source_aware'``: as many disjoint pairs as possible such that the two
  images of a pair never come from the same source photo (two variants of one
  photo are near-duplicates: pairing them teaches memory, not recognition),
  i.e. min(floor(n / 2), n - largest source) per identity. Identities with a
  single source photo are left out with one summary warning.
* ``'same_source'``: the opposite, the paper's "mask as a transformation" in
  its purest form: disjoint pairs of two variants of ONE source photo (another
  mask, or none), floor(k / 2) per photo with k variants. Photos with a single
  variant are left out.

``standard`` and ``all_pairs`` *prefer* different source photos but fall back
to same-source pairs; ``source_aware`` never does. All three prefer a masked
with an unmasked image when mask flags are known (unmasked first).

Pairs depend only on (seed, epoch). A global batch is split between hosts by
``process_index``/``process_count`` so that every host reads only its own rows.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np

PAIR_MODES = ("standard", "all_pairs", "source_aware", "same_source")


class _Identity:
    """Indices of one identity's images with what the pair preferences need."""

    def __init__(self, indices, sources, masked):
        self.indices = np.asarray(indices, np.int64)
        self.sources = np.asarray(sources)
        self.groups = np.unique(self.sources, return_inverse=True)[1]
        # 1 masked, 0 unmasked, -1 unknown.
        self.masked = np.asarray([-1 if m is None else int(m) for m in masked], np.int8)
        different = self.sources[:, None] != self.sources[None, :]
        known = (self.masked[:, None] >= 0) & (self.masked[None, :] >= 0)
        self.mixed = known & (self.masked[:, None] != self.masked[None, :])
        # Different source photos matter most: two variants of one photo are
        # near-duplicates. A masked/unmasked mix comes second.
        self.tier = 2.0 * different + self.mixed


def cross_source_capacity(group_sizes) -> int:
    """Most disjoint pairs whose two images come from different groups (sources)."""
    sizes = np.asarray(group_sizes)
    total = int(sizes.sum())
    return min(total // 2, total - int(sizes.max(initial=0)))


def _pick_pairs(ident: _Identity, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Greedily pick ``count`` disjoint pairs of the best available tier.

    Ties go to images of the sources with most images left, so that small
    sources are not used up early and leave same-source pairs at the end.
    """
    n = len(ident.indices)
    free = np.ones(n, bool)
    pairs = []
    for _ in range(count):
        crowd = np.bincount(ident.groups, weights=free)[ident.groups]
        # Tier first, then crowded sources, then chance: crowd + noise < 2n + 1.
        score = ident.tier * (2 * n + 1) + crowd[:, None] + crowd[None, :] + rng.random((n, n))
        score[~free, :] = score[:, ~free] = -np.inf
        np.fill_diagonal(score, -np.inf)
        a, b = np.unravel_index(np.argmax(score), score.shape)
        free[[a, b]] = False
        pairs.append(_order(ident, a, b, rng))
    return pairs


def _pick_cross_source_pairs(ident: _Identity, count: int,
                             rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` disjoint pairs, never two images of one source photo.

    Masked/unmasked pairs are preferred, but a pair is taken only if the
    images left can still form the remaining pairs, so the count per identity
    (and hence per epoch) never varies. ``count`` must not exceed the capacity.
    """
    n = len(ident.indices)
    free = np.ones(n, bool)
    left = np.bincount(ident.groups)
    pairs = []
    for remaining in range(count - 1, -1, -1):
        score = 2.0 * ident.mixed + rng.random((n, n))
        score[ident.groups[:, None] == ident.groups[None, :]] = -np.inf
        score[~free, :] = score[:, ~free] = -np.inf
        for flat in np.argsort(-score, axis=None):
            a, b = divmod(int(flat), n)
            after = left.copy()
            after[[ident.groups[a], ident.groups[b]]] -= 1
            if remaining <= cross_source_capacity(after):
                break
        free[[a, b]] = False
        left = after
        pairs.append(_order(ident, a, b, rng))
    return pairs


def _same_source_capacity(ident: _Identity) -> int:
    return int(np.sum(np.bincount(ident.groups) // 2))


def _pick_same_source_pairs(ident: _Identity, count: int,
                            rng: np.random.Generator) -> list[tuple[int, int]]:
    """Every source photo's variants, shuffled and paired off (``count`` is the capacity)."""
    pairs = []
    for group in range(int(ident.groups.max()) + 1):
        members = rng.permutation(np.flatnonzero(ident.groups == group))
        pairs += [_order(ident, a, b, rng) for a, b in zip(members[0::2], members[1::2])]
    assert len(pairs) == count
    return pairs


def _order(ident: _Identity, a: int, b: int, rng: np.random.Generator) -> tuple[int, int]:
    """Unmasked image first when the flags say so, else a random order."""
    ma, mb = ident.masked[a], ident.masked[b]
    if ma >= 0 and mb >= 0 and ma != mb:
        first_a = ma == 0
    else:
        first_a = rng.random() < 0.5
    a, b = (a, b) if first_a else (b, a)
    return int(ident.indices[a]), int(ident.indices[b])


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """This host's (index, count), from JAX unless given (tests pass them)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in 0..{process_count - 1} "
                         f"(process_count={process_count}).")
    return int(process_index), int(process_count)


class PairSampler:
    """Which images to pair in each epoch; knows records only, never pixels."""

    def __init__(self, records: Sequence, *, seed: int, pair_sampler: str = "standard"):
        if pair_sampler not in PAIR_MODES:
            raise ValueError(f"pair sampler {pair_sampler!r} is unknown "
                             f"(config.data.pair_sampler); use one of {PAIR_MODES}.")
        self.records, self.seed = list(records), int(seed)
        self.pair_sampler = pair_sampler
        by_label = {}
        for i, record in enumerate(self.records):
            by_label.setdefault(record.label, []).append(i)
        identities = [
            _Identity(idx, [self.records[i].source for i in idx],
                      [self.records[i].masked for i in idx])
            for _, idx in sorted(by_label.items()) if len(idx) >= 2]
        self._identities = self._drop_unpairable(identities)
        self.pairs_per_epoch = sum(self._pairs_of(ident) for ident in self._identities)

    def _drop_unpairable(self, identities: list[_Identity]) -> list[_Identity]:
        if self.pair_sampler != "source_aware":
            return identities
        kept = [i for i in identities if cross_source_capacity(np.bincount(i.groups)) > 0]
        if len(kept) < len(identities):
            warnings.warn(f"source_aware pairs: left out {len(identities) - len(kept)} of "
                          f"{len(identities)} identities whose images all come from one "
                          "source photo (no pair of different photos).", stacklevel=3)
        return kept

    def _pairs_of(self, ident: _Identity) -> int:
        if self.pair_sampler == "standard":
            return 1
        if self.pair_sampler == "all_pairs":
            return len(ident.indices) // 2
        if self.pair_sampler == "same_source":
            return _same_source_capacity(ident)
        return cross_source_capacity(np.bincount(ident.groups))

    def epoch_pairs(self, epoch: int) -> np.ndarray:
        """int64 (P, 2) indices into ``records`` for ``epoch``, shuffled; same on every host."""
        rng = np.random.default_rng((self.seed, int(epoch)))
        pick = {"source_aware": _pick_cross_source_pairs,
                "same_source": _pick_same_source_pairs}.get(self.pair_sampler, _pick_pairs)
        pairs = [pair for ident in self._identities
                 for pair in pick(ident, self._pairs_of(ident), rng)]
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        return pairs[rng.permutation(len(pairs))]

    def steps_per_epoch(self, global_batch: int) -> int:
        """Full batches per epoch; the remainder of the pairs is dropped."""
        if global_batch < 1 or self.pairs_per_epoch // global_batch == 0:
            more = ("" if self.pair_sampler == "all_pairs" else
                    ", or set config.data.pair_sampler='all_pairs' (the most pairs per identity)")
            raise ValueError(
                f"{self.pairs_per_epoch} pairs per epoch (config.data.pair_sampler="
                f"{self.pair_sampler!r} over {len(self._identities)} identities with >= 2 "
                f"images) do not fill one batch of config.optim.batch_size={global_batch}; "
                f"lower the batch size or add identities{more}.")
        return self.pairs_per_epoch // global_batch

    def host_pairs(self, epoch: int, global_batch: int, *, process_index: int | None = None,
                   process_count: int | None = None) -> np.ndarray:
        """int64 (steps, global_batch / process_count, 2): this host's rows of every batch."""
        index, count = resolve_processes(process_index, process_count)
        if global_batch % count:
            raise ValueError(f"global batch {global_batch} does not split over {count} "
                             "processes; make config.optim.batch_size a multiple of it.")
        steps, local = self.steps_per_epoch(global_batch), global_batch // count
        pairs = self.epoch_pairs(epoch)[:steps * global_batch].reshape(steps, global_batch, 2)
        return pairs[:, index * local:(index + 1) * local]


def device_layout(rows: np.ndarray, devices: int) -> np.ndarray:
    """A host batch of pairs (n, 2, ...) -> (devices, 2, n / devices, ...), contiguous: the
    layout the train step's pmap takes (each device's slice: its two views)."""
    if len(rows) % devices:
        raise ValueError(f"this host's batch of {len(rows)} pairs does not split over "
                         f"{devices} devices; make config.optim.batch_size a multiple of "
                         "the device count.")
    split = rows.reshape((devices, len(rows) // devices) + rows.shape[1:])
    return np.ascontiguousarray(np.swapaxes(split, 1, 2))


def check_start_step(start_step: int, steps: int, global_batch: int) -> None:
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step={start_step} is outside 0..{steps} "
                         f"(steps per epoch at global_batch={global_batch}).")


class PairDataset(PairSampler):
    """Pairs over images preloaded in memory (``folder.load_images``).

    ``pair_sampler`` is one of ``PAIR_MODES`` (see the module docstring).
    """

    def __init__(self, records: Sequence, images: np.ndarray, *, seed: int,
                 pair_sampler: str = "standard", process_index: int | None = None,
                 process_count: int | None = None):
        if len(records) != len(images):
            raise ValueError(f"{len(records)} records but {len(images)} images: load the "
                             "images from the same records (load_images(records, size)).")
        super().__init__(records, seed=seed, pair_sampler=pair_sampler)
        self.images = images
        self.process_index, self.process_count = process_index, process_count

    def batches(self, epoch: int, global_batch: int, *, start_step: int = 0,
                devices: int = 1) -> Iterator[np.ndarray]:
        """Yield this host's rows of each remaining batch of ``epoch`` as
        (devices, 2, per_device, ...) (``device_layout``), gathered in one copy.

        ``start_step`` skips that many batches without gathering them, so a
        resumed run sees exactly the batches it would have seen.
        """
        steps = self.steps_per_epoch(global_batch)
        check_start_step(start_step, steps, global_batch)
        pairs = self.host_pairs(epoch, global_batch, process_index=self.process_index,
                                process_count=self.process_count)
        for chosen in pairs[start_step:]:
            yield self.images[device_layout(chosen, devices)]
