"""Rank groups for a batch: how many ranks fit each data set, and which group fits which.

Pure functions, no MPI. A batch of many data sets (one per q bin, say) fits them faster
on several groups of ranks at once than one after another on all ranks, because part of
each fit does not shrink with ranks: start-up, compilation, the leader's reading and
each LM iteration's Allreduce. ``plan_groups`` cuts the world into contiguous groups and
shares the data sets out among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .partition import balanced_counts

POINT_BYTES = 28
"""Bytes a rank holds per point of its share (angle, two frame indices, value, weight)."""

SHARE_BYTES_PER_RANK = 2 * 1024**3
"""Automatic group size: the most point-share memory a rank should need, bytes (2 GiB).
Data sets larger than ``SHARE_BYTES_PER_RANK / POINT_BYTES`` points (7.7e7) get groups of
several ranks however many data sets there are."""


@dataclass(frozen=True)
class GroupPlan:
    """Which ranks form which group, and which data sets each group fits."""

    rank_counts: tuple[int, ...]
    """Ranks in each group; group ``g`` is the contiguous world ranks after the groups before it."""
    datasets: tuple[tuple[int, ...], ...]
    """Indices (into the batch's data set list) each group fits, ascending."""

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.rank_counts)

    def group_of(self, world_rank: int) -> int:
        """The group a world rank belongs to."""
        ends = np.cumsum(self.rank_counts)
        if not 0 <= world_rank < int(ends[-1]):
            raise ValueError(f"rank {world_rank} is outside a world of {int(ends[-1])} ranks")
        return int(np.searchsorted(ends, world_rank, side="right"))

    def leaders(self) -> tuple[int, ...]:
        """World rank of each group's first rank (its leader: reads, writes, logs)."""
        starts = np.concatenate([[0], np.cumsum(self.rank_counts)[:-1]])
        return tuple(int(s) for s in starts)


def auto_group_size(world_size: int, point_counts, share_bytes: int = SHARE_BYTES_PER_RANK) -> int:
    """Ranks per group for a batch whose data sets have ``point_counts`` points.

    As many groups as data sets, up to one per rank: every group then pays its start-up,
    compilation and leader's reading side by side instead of one data set after another
    (the cost model in docs/performance.md), while the kernel work per data set is the
    same total. Groups are made larger only where the largest data set's points would
    need more than ``share_bytes`` on a rank. One data set (or none): every rank.
    Unknown sizes (0: a file that cannot be read) do not count.
    """
    if world_size < 1:
        raise ValueError("auto_group_size needs world_size >= 1")
    counts = [int(c) for c in point_counts]
    if len(counts) <= 1:
        return world_size
    by_memory = -(-max(counts) * POINT_BYTES // max(int(share_bytes), 1)) or 1
    n_groups = max(1, min(len(counts), world_size // by_memory))
    return int(min(world_size, max(world_size // n_groups, by_memory)))


def plan_groups(world_size: int, point_counts, group_size: int | None = None) -> GroupPlan:
    """Split ``world_size`` ranks into groups of about ``group_size`` and share out the data sets.

    ``group_size`` ``None`` chooses it with ``auto_group_size``; a size above the world is
    the world. The number of groups is ``world_size // group_size`` (leftover ranks join
    the first groups), never more than the number of data sets. Data sets go, largest
    first (by ``point_counts``, ties by position), to the group with the fewest ranks-
    weighted points so far (ties: the lower group); a size of 0 (unknown) counts as the
    largest. Each group fits its own in batch order.
    """
    counts = [int(c) for c in point_counts]
    size = auto_group_size(world_size, counts) if group_size is None else int(group_size)
    if size < 1:
        raise ValueError("group_size must be at least 1")
    n_groups = max(1, min(world_size // min(size, world_size), max(len(counts), 1)))
    rank_counts = tuple(int(c) for c in balanced_counts(world_size, n_groups))
    load = np.zeros(n_groups)
    assigned: list[list[int]] = [[] for _ in range(n_groups)]
    largest = max(counts, default=1) or 1
    work = [count if count > 0 else largest for count in counts]
    for index in sorted(range(len(work)), key=lambda k: (-work[k], k)):
        group = int(np.argmin(load + work[index] / np.asarray(rank_counts)))
        load[group] += work[index] / rank_counts[group]
        assigned[group].append(index)
    return GroupPlan(rank_counts, tuple(tuple(sorted(group)) for group in assigned))
