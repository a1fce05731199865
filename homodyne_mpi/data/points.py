"""Strict-upper-triangle points ``(angle, i < j)`` of the two-time matrices, angle-major and
row-major: the unit of all fitting work (``c2`` is symmetric, its diagonal a speckle-noise spike)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class PointSet:
    """Columns of a set of points; every column has one entry per point."""

    angle: np.ndarray
    """Index of the angle (int32) into the data set's ``phi``."""
    frame_i: np.ndarray
    """0-based row frame index ``i`` (int32) within the fitted window."""
    frame_j: np.ndarray
    """0-based column frame index ``j > i`` (int32)."""
    value: np.ndarray
    """Measured ``c2`` (float64)."""
    weight: np.ndarray
    """``1 / sigma`` of the point (float64); 0 marks padding that contributes nothing."""

    def __len__(self) -> int:
        return int(self.value.shape[0])

    @classmethod
    def column_names(cls) -> tuple[str, ...]:
        """Names of the columns, in a fixed order (used to scatter them one by one)."""
        return tuple(f.name for f in fields(cls))

    def take(self, index) -> PointSet:
        """The points selected by an index array, slice or boolean mask."""
        return PointSet(**{name: getattr(self, name)[index] for name in self.column_names()})

    @staticmethod
    def padding_columns(length: int, fill_angle: int = 0) -> dict[str, np.ndarray]:
        """Columns of ``length`` padding points: ``i=0, j=1``, weight 0, angle ``fill_angle``."""
        return {
            "angle": np.full(length, fill_angle, np.int32),
            "frame_i": np.zeros(length, np.int32),
            "frame_j": np.ones(length, np.int32),
            "value": np.zeros(length, np.float64),
            "weight": np.zeros(length, np.float64),
        }

    def padded(self, length: int, fill_angle: int = 0) -> PointSet:
        """A copy extended to ``length`` points with padding (see ``padding_columns``; the last angle
        as ``fill_angle`` keeps the order sorted); itself if long enough."""
        extra = length - len(self)
        if extra < 0:
            raise ValueError("padded length is shorter than the point set")
        if extra == 0:
            return self
        pad = self.padding_columns(extra, fill_angle)
        return PointSet(**{name: np.concatenate([getattr(self, name), pad[name]]) for name in self.column_names()})

    @property
    def nbytes(self) -> int:
        """Memory held by the columns, bytes."""
        return sum(getattr(self, name).nbytes for name in self.column_names())


def upper_triangle_points(c2: np.ndarray, sigma: np.ndarray) -> PointSet:
    """All points ``i < j`` of ``c2`` (shape ``(n_angles, N, N)``), weighted ``1/sigma[angle]``."""
    n_angles, n_frames, _ = c2.shape
    rows, cols = (index.astype(np.int32) for index in np.triu_indices(n_frames, k=1))
    per_angle = rows.size
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n_angles,))
    if np.any(~np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ValueError("noise sigma must be finite and positive for every angle")
    value = np.empty(n_angles * per_angle, dtype=np.float64)
    for angle in range(n_angles):
        value[angle * per_angle : (angle + 1) * per_angle] = c2[angle][rows, cols]
    return PointSet(
        angle=np.repeat(np.arange(n_angles, dtype=np.int32), per_angle),
        frame_i=np.tile(rows, n_angles),
        frame_j=np.tile(cols, n_angles),
        value=value,
        weight=np.repeat(1.0 / sigma, per_angle),
    )


def points_before_row(row, n_frames: int):
    """Points ``(i, j > i)`` of one angle in the rows before ``row``: ``row (2N - row - 1) / 2``."""
    row = np.asarray(row, dtype=np.int64)
    return row * (2 * n_frames - row - 1) // 2


def row_block_points(rows: np.ndarray, first_row: int, angle: int, weight: float, first_column: int = 0) -> PointSet:
    """The points ``j > i``, row-major, weighted ``weight`` (``1 / sigma``), of rows ``first_row ..``
    of one angle's full symmetric matrix, given as their columns ``first_column ..`` (``rows``)."""
    k, width = rows.shape
    row_index = first_row + np.arange(k)
    upper = (first_column + np.arange(width))[None, :] > row_index[:, None]
    frame_i, frame_j = np.nonzero(upper)
    value = np.asarray(rows, dtype=np.float64)[upper]
    return PointSet(
        angle=np.full(value.size, angle, np.int32),
        frame_i=(frame_i + first_row).astype(np.int32),
        frame_j=(frame_j + first_column).astype(np.int32),
        value=value,
        weight=np.full(value.size, weight, np.float64),
    )


def stream_points(read_rows, n_angles: int, n_frames: int, sigma, max_points: int):
    """Yield the points of ``upper_triangle_points`` in the same order, in blocks of whole rows
    of at most ``B = max(max_points, N - 1)`` points (``16 B`` bytes of rows read and ``28 B`` of
    points at a time), from ``read_rows(angle, r0, r1, c0 = r0 + 1)`` (``PointSource.read_rows``)."""
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n_angles,))
    before = points_before_row(np.arange(n_frames + 1), n_frames)
    for angle in range(n_angles):
        row = 0
        while row < n_frames - 1:
            stop = int(np.searchsorted(before, before[row] + max(int(max_points), 1), side="right")) - 1
            stop = min(max(stop, row + 1), n_frames - 1)
            rows = read_rows(angle, row, stop, row + 1)
            yield row_block_points(rows, row, angle, 1.0 / sigma[angle], first_column=row + 1)
            row = stop
