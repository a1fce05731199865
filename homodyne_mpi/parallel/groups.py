"""Rank groups for a batch: how many ranks fit each data set, and which group fits which (pure, no MPI).

Many data sets (one per q bin, say) fit faster on several rank groups at once than one after another on
all ranks: start-up, compilation, the leader's reading and each LM iteration's Allreduce do not shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .partition import balanced_counts

POINT_BYTES = 28
"""Bytes a rank holds per point of its share (angle, two frame indices, value, weight)."""

SHARE_BYTES_PER_RANK = 2 * 1024**3
"""Automatic group size: the most point-share memory a rank should need, bytes (2 GiB, 7.7e7 points)."""


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
    """Ranks per group for a batch whose data sets have ``point_counts`` points (0: unknown, not counted).

    As many groups as data sets, up to one per rank (their fixed costs run side by side, docs/performance.md);
    larger only where the largest data set would need more than ``share_bytes`` on a rank. One data set: every rank.
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
    """Split ``world_size`` ranks into ``world_size // group_size`` groups (leftover ranks join the first; at
    most one per data set) and share out the data sets. ``group_size`` ``None``: ``auto_group_size``; above the
    world: the world. Data sets go, largest first (ties by position; size 0 counts as the largest), to the group
    with the fewest points per rank so far (ties: the lower group)."""
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
