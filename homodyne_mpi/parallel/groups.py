"""Rank groups for a batch: how many ranks fit each data set, and which group fits which.

Pure functions, no MPI. A batch of many small data sets (one per q bin, say) fits them
faster on several groups of ranks at once than one after another on all ranks, because a
small fit cannot keep many ranks busy: its start-up, start search and I/O do not shrink
with ranks, and each LM iteration pays one Allreduce. ``plan_groups`` cuts the world into
``n_groups`` contiguous blocks of ranks (sizes differ by at most one) and hands each group
a list of data sets, the largest first to the group with the least work so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .partition import balanced_counts

MIN_POINTS_PER_RANK = 1_000_000
"""Automatic group size: give each rank of a group at least this many points of a typical
data set. At the measured laminar kernel rate (about 1.4e7 points/s/core) that is 70 ms of
work per LM iteration and rank, far above an Allreduce of the packed normal equations."""


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


def auto_group_size(world_size: int, point_counts, min_points_per_rank: int = MIN_POINTS_PER_RANK) -> int:
    """Ranks per group for a batch whose data sets have ``point_counts`` points.

    One data set (or none): every rank in one group. Otherwise enough ranks that the median
    data set gives each one ``min_points_per_rank`` points, but no more groups than data
    sets (so no group idles). Unknown sizes (a count of 0, e.g. a file that cannot be read)
    are left out of the median.
    """
    if world_size < 1:
        raise ValueError("auto_group_size needs world_size >= 1")
    counts = np.asarray(list(point_counts), dtype=np.float64)
    if counts.size <= 1:
        return world_size
    known = counts[counts > 0]
    typical = float(np.median(known)) if known.size else 0.0
    by_work = max(1, int(typical // max(min_points_per_rank, 1)))
    by_count = -(-world_size // counts.size)
    return int(min(world_size, max(by_work, by_count)))


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
