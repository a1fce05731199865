"""Who gets which points, and in which order shards are handed out: pure NumPy, no MPI.

Rules (details in ``docs/cmc.md``):

- **Shard count.** ``sharding.num_shards`` when given, else ``ceil(n_points /
  max_points_per_shard)`` (``auto``: ``AUTO_MAX_POINTS_PER_SHARD``), lowered until every
  shard holds ``min_points_per_parameter`` points per sampled parameter, then raised to
  the rank count where that allows (the only step that depends on the rank count).
- **Assignment.** ``stratified`` (default): each angle's points shuffled (seeded) and
  dealt out in near-equal runs, the spare point rotating between shards, so every shard
  holds every angle in proportion. ``random``: one seeded shuffle cut into near-equal
  runs, stratified instead if a shard lacks an angle. Points keep their original order.
- **Dispatch order.** Largest shard first, ties by index.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

AUTO_MAX_POINTS_PER_SHARD = 20_000
"""Largest shard of the ``auto`` rule, points (raised to the per-parameter minimum)."""

SHARDING_STREAM = 0x5348_4152
"""Second word of the sharding seed sequence, so the split is independent of NUTS keys."""


def shard_count(
    n_points: int,
    n_sampled_params: int,
    *,
    num_shards: int | str = "auto",
    max_points_per_shard: int | str = "auto",
    min_points_per_parameter: int = 200,
    n_ranks: int = 1,
) -> int:
    """Number of shards for ``n_points`` points (module docstring) from the config values (int,
    ``'auto'`` or None); a configured ``num_shards`` is capped at ``n_points``."""
    if n_points < 1 or n_sampled_params < 1 or min_points_per_parameter < 1:
        raise ValueError("shard_count needs at least one point, one parameter and one point per parameter")
    smallest = int(n_sampled_params) * int(min_points_per_parameter)  # the smallest shard of the automatic rule
    if num_shards not in (None, "auto"):
        count = min(int(num_shards), n_points)
        if count < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if n_points // count < smallest:
            log.warning(
                "sharding.num_shards = %d gives shards of ~%d points, below the minimum of %d "
                "(%d points x %d parameters); the shard posteriors may be far from Gaussian",
                count,
                n_points // count,
                smallest,
                min_points_per_parameter,
                n_sampled_params,
            )
        return count
    if max_points_per_shard in (None, "auto"):
        largest = max(AUTO_MAX_POINTS_PER_SHARD, smallest)
    else:
        largest = int(max_points_per_shard)
        if largest < 1:
            raise ValueError(f"max_points_per_shard must be >= 1, got {max_points_per_shard}")
    count = math.ceil(n_points / largest)
    most = max(1, n_points // smallest)
    if count > most:
        log.info(
            "CMC: %d shards of <= %d points would hold fewer than %d points each; using %d shards", count, largest, smallest, most
        )
        count = most
    if count < n_ranks and most > count:
        log.info("CMC: %d shard(s) for %d ranks; using %d so every rank has work", count, n_ranks, min(n_ranks, most))
        count = min(n_ranks, most)
    return max(1, count)


def _deal(n_items: int, n_shards: int, first_extra: int) -> np.ndarray:
    """Run lengths of ``n_items`` over ``n_shards``, spare items to the shards from ``first_extra`` on (cyclically)."""
    base, extra = divmod(n_items, n_shards)
    counts = np.full(n_shards, base, dtype=np.int64)
    counts[(first_extra + np.arange(extra)) % n_shards] += 1
    return counts


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), SHARDING_STREAM]))


def stratified_shards(angle: np.ndarray, n_shards: int, seed: int) -> list[np.ndarray]:
    """Point indices of each shard, every angle split in proportion (sorted indices)."""
    angle = np.asarray(angle)
    rng = _rng(seed)
    order = np.argsort(angle, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(angle[order])) + 1) if angle.size else []
    pieces: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
    first_extra = 0
    for group in groups:
        shuffled = group[rng.permutation(group.size)]
        counts = _deal(group.size, n_shards, first_extra)
        first_extra = (first_extra + group.size % n_shards) % n_shards
        for shard, run in enumerate(np.split(shuffled, np.cumsum(counts)[:-1])):
            pieces[shard].append(run)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in pieces]


def random_shards(angle: np.ndarray, n_shards: int, seed: int) -> list[np.ndarray]:
    """Point indices of each shard from one seeded shuffle (stratified when a shard would miss an angle)."""
    angle = np.asarray(angle)
    shuffled = _rng(seed).permutation(angle.size)
    counts = _deal(angle.size, n_shards, 0)
    shards = [np.sort(run) for run in np.split(shuffled, np.cumsum(counts)[:-1])]
    n_angles = np.unique(angle).size
    if any(np.unique(angle[s]).size < n_angles for s in shards):
        log.warning("CMC: a random shard lacks an angle; using the stratified split instead")
        return stratified_shards(angle, n_shards, seed)
    return shards


def assign_shards(angle: np.ndarray, n_shards: int, *, strategy: str = "stratified", seed: int = 0) -> list[np.ndarray]:
    """Sorted point indices of each of ``n_shards`` shards (a partition of all points)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if strategy == "stratified":
        return stratified_shards(angle, n_shards, seed)
    if strategy == "random":
        return random_shards(angle, n_shards, seed)
    raise ValueError(f"unknown sharding strategy {strategy!r} (stratified | random)")


def dispatch_order(sizes: Sequence[int]) -> list[int]:
    """Order in which shards are handed out: largest first, ties by shard index."""
    return [int(i) for i in np.lexsort((np.arange(len(sizes)), -np.asarray(sizes, dtype=np.int64)))]


def adapted_counts(shard_points: int, *, num_warmup: int, num_samples: int, min_samples: int) -> tuple[int, int]:
    """Warm-up and kept samples per chain for a shard of ``shard_points`` points: always the full
    ``num_warmup`` (small shards have the least Gaussian posteriors); ``num_samples`` times
    ``min(1, shard_points / REFERENCE_SHARD_POINTS)``, rounded up, clipped to ``[min_samples, num_samples]``."""
    fraction = min(1.0, shard_points / REFERENCE_SHARD_POINTS)
    samples = min(num_samples, max(min(min_samples, num_samples), math.ceil(num_samples * fraction)))
    return max(int(num_warmup), 0), int(samples)


REFERENCE_SHARD_POINTS = 10_000
"""Shard size from which the configured warm-up and sample counts apply unscaled."""
