"""Pure functions of the rank-independent reduction: chunk layout and a fixed summation tree.

A fit's points are cut into global chunks of ``chunk`` consecutive points; ``ChunkLayout`` gives each
rank a balanced run of whole chunks. Sums are taken on one fixed binary tree over chunk indices: node
``(level, k)`` covers chunks ``[k 2^level, (k+1) 2^level)`` and is ``left + right`` (``left`` alone when
the right child is empty). Each rank evaluates the largest nodes inside its run (``local_cover``), every
rank completes the tree (``combine_cover``): each node is the same floating-point expression whichever
rank evaluates it, so the total has the same bits on any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .partition import balanced_counts

MIN_CHUNK = 256
"""Smallest chunk length used for problems smaller than one configured chunk."""


@dataclass(frozen=True)
class ChunkLayout:
    """Global chunks of a point set (the last padded with zero-weight points); rank ``r`` holds chunks
    ``edges[r]:edges[r+1]`` (``balanced_counts``: runs differ by at most one chunk)."""

    n_points: int
    chunk: int
    n_ranks: int

    @property
    def n_chunks(self) -> int:
        """Chunks covering the points (at least one)."""
        return max(1, -(-self.n_points // self.chunk))

    @property
    def edges(self) -> np.ndarray:
        """``(n_ranks + 1,)`` first chunk of each rank, then the chunk count."""
        return np.concatenate([[0], np.cumsum(balanced_counts(self.n_chunks, self.n_ranks))])

    def chunks_of(self, rank: int) -> tuple[int, int]:
        """Chunk range ``[first, stop)`` of ``rank``."""
        edges = self.edges
        return int(edges[rank]), int(edges[rank + 1])

    def points_of(self, rank: int) -> tuple[int, int]:
        """Global range ``[first, stop)`` of the real (unpadded) points of ``rank``."""
        first, stop = self.chunks_of(rank)
        return min(first * self.chunk, self.n_points), min(stop * self.chunk, self.n_points)

    def point_counts(self) -> np.ndarray:
        """Real points per rank (what a scatter of the global point array sends)."""
        return np.array([b - a for a, b in map(self.points_of, range(self.n_ranks))], dtype=np.int64)

    def capacity_of(self, rank: int) -> int:
        """Points of ``rank``'s block once padded to whole chunks."""
        first, stop = self.chunks_of(rank)
        return (stop - first) * self.chunk


def chunk_layout(n_points: int, chunk_size: int, n_ranks: int) -> ChunkLayout:
    """The layout of ``n_points`` in chunks of ``chunk_size`` points, or, for fewer points, of the
    next power of two (>= ``MIN_CHUNK``) above ``n_points``."""
    n_points, chunk = int(n_points), int(chunk_size)
    if n_points < chunk:
        chunk = max(MIN_CHUNK, 1 << max(0, int(np.ceil(np.log2(max(n_points, 1))))))
    return ChunkLayout(n_points, chunk, int(n_ranks))


def level_count(n_chunks: int) -> int:
    """Levels above the leaves of the tree over ``n_chunks`` chunks (root at this level)."""
    return int(np.ceil(np.log2(max(n_chunks, 1))))


def nodes_at(level: int, n_chunks: int) -> int:
    """Non-empty nodes at ``level``."""
    return -(-n_chunks // (1 << level))


def local_cover(rows: np.ndarray, first: int, n_chunks: int) -> list[tuple[int, int, np.ndarray]]:
    """``(level, index, value)`` of the largest tree nodes inside chunks ``[first, first + len(rows))`` (rows
    ``(n_local, L)``, one per chunk), tiling the run; pairs are added level by level, vectorised, in tree order."""
    values = np.asarray(rows, dtype=np.float64)
    lo, cover = int(first), []
    for level in range(level_count(n_chunks) + 1):
        hi = lo + len(values)
        if len(values) == 0:
            break
        if nodes_at(level, n_chunks) == 1:
            cover.append((level, 0, values[0]))
            break
        parent_lo = (lo + 1) // 2
        start = 2 * parent_lo - lo
        pairs = (hi - 2 * parent_lo) // 2
        parents = values[start : start + 2 * pairs : 2] + values[start + 1 : start + 2 * pairs : 2]
        if start == 1:
            cover.append((level, lo, values[0]))
        tail = start + 2 * pairs
        if tail < len(values):
            if hi == nodes_at(level, n_chunks):
                parents = np.concatenate([parents, values[tail : tail + 1]])
            else:
                cover.append((level, hi - 1, values[tail]))
        values, lo = parents, parent_lo
    return cover


def combine_cover(nodes: dict[tuple[int, int], np.ndarray], n_chunks: int) -> np.ndarray:
    """The root's value from nodes that tile all chunks (``local_cover`` of every rank)."""

    def value(level: int, index: int) -> np.ndarray:
        known = nodes.get((level, index))
        if known is not None:
            return known
        if level == 0:
            raise ValueError(f"chunk {index} is missing from the reduction")
        left = value(level - 1, 2 * index)
        if 2 * index + 1 >= nodes_at(level - 1, n_chunks):
            return left
        return left + value(level - 1, 2 * index + 1)

    return value(level_count(n_chunks), 0)
