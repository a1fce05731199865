"""Scatter a stream of point blocks: every rank receives its contiguous share, block by block.

The root iterates blocks in global order (``PointSource.point_blocks``): per block it broadcasts the
length, then one ``Scatterv`` per column sends each rank the part inside its range. The root holds
one block beyond its share (28 bytes a point, plus the ``rows x N x 8`` bytes it was read from).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..data.points import PointSet
from ..errors import HomodyneError, InputError, collective
from .chunk_order import chunk_layout
from .comm import Comm, aligned_zeros

COLUMN_DTYPES = {name: column.dtype for name, column in PointSet.padding_columns(0).items()}
"""The dtype of each ``PointSet`` column."""

STREAM_FAILED = -2
"""Length the root broadcasts when reading a block failed (the stream ends on every rank)."""


def block_counts(block_start: int, block_length: int, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Points of the block ``[block_start, block_start + block_length)`` that fall in each rank's range."""
    low = np.maximum(offsets, block_start)
    high = np.minimum(offsets + counts, block_start + block_length)
    return np.maximum(high - low, 0)


def scatter_point_stream(blocks: Iterable[PointSet] | None, counts, comm: Comm, capacity: int | None = None) -> PointSet:
    """Every rank's contiguous share, ``counts[r]`` points, of the root's stream of point blocks (collective).

    ``capacity`` pads as ``Comm.scatter_rows`` does. A ``HomodyneError`` while the root reads a block is
    raised on every rank, ``collective``: the root's own, an ``InputError`` elsewhere.
    """
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mine = int(counts[comm.rank])
    rows = max(mine, int(capacity or 0))
    columns = {name: aligned_zeros((rows,), dtype) for name, dtype in COLUMN_DTYPES.items()}
    iterator = iter(blocks) if comm.is_root and blocks is not None else iter(())
    position = 0
    while True:
        block, error = None, None
        try:
            block = next(iterator, None)
        except HomodyneError as exc:  # bad rows on the root: every rank leaves together
            error = exc
        length = int(comm.bcast(STREAM_FAILED if error is not None else len(block) if block is not None else -1))
        if length == STREAM_FAILED:
            raise collective(error or InputError("rank 0 could not read the data set (see its error line)"))
        if length < 0:
            break
        pieces = block_counts(position, length, offsets, counts)
        start = max(int(offsets[comm.rank]), position) - int(offsets[comm.rank])
        for name in COLUMN_DTYPES:
            received = comm.scatter_rows(getattr(block, name) if comm.is_root else None, pieces.tolist())
            columns[name][start : start + int(pieces[comm.rank])] = received[: int(pieces[comm.rank])]
        position += length
    if position != int(counts.sum()):
        raise ValueError(f"the point stream held {position} points, the counts {int(counts.sum())}")
    return PointSet(**columns)


def scatter_point_source(blocks: Iterable[PointSet] | None, n_points: int, comm: Comm, chunk_size: int) -> PointSet:
    """``nlsq.fit.distribute_points`` from the root's stream of point blocks (collective): rank ``r`` gets
    ``chunk_layout(...).points_of(r)`` in ``capacity_of(r)`` points, padded with zero weight on its last angle."""
    layout = chunk_layout(n_points, chunk_size, comm.size)
    counts = layout.point_counts()
    mine = int(counts[comm.rank])
    capacity = layout.capacity_of(comm.rank)
    local = scatter_point_stream(blocks, counts, comm, capacity=capacity)
    if capacity > mine:
        fill_angle = int(local.angle[mine - 1]) if mine else 0
        for name, padding in PointSet.padding_columns(capacity - mine, fill_angle).items():
            getattr(local, name)[mine:] = padding
    return local
