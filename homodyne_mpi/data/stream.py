"""Read a data set's matrices a block of rows at a time, never the whole matrix.

:class:`PointSource` opens the same file, bins, angles and frame window as
:func:`~homodyne_mpi.data.loader.load_xpcs`, but keeps the HDF5 file open and reads
row blocks (h5py hyperslabs) on request. With :func:`~homodyne_mpi.data.points.stream_points`
it yields the fit's points in the global order of ``upper_triangle_points`` while holding
only one block; :meth:`PointSource.noise_sigmas` gives the same per-angle noise levels as
``estimate_noise_sigmas`` on the loaded matrices, reading only the sampled row pairs.

Storage: the correlator stores the upper triangle (lower left at 0); a full matrix and a
lower half are read too. Rows of the full symmetric matrix ``C`` are then
``C[i, j > i] = stored[i, j]`` (upper half or full) or ``stored[j, i]`` (lower half, read
as column blocks). Only the entries right of the diagonal of a returned row are defined.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .loader import _count_nonfinite, _open, _resolve_dt, _select_matrices, config_dataset_arguments
from .noise import noise_row_stride, noise_sigma_from_rows
from .points import stream_points
from .selection import frame_window

NOISE_READ_ROWS = 256
"""Rows per read while estimating the noise from every row pair (a ``256 x N`` float64 block)."""


class PointSource:
    """An open data set whose matrices are read in row blocks (use as a context manager)."""

    def __init__(self, path, *, wavevector_q: float, phi_ranges=None, start_frame=1, end_frame=None, dt=None):
        self.source = str(path)
        self._h5 = _open(Path(os.fspath(path)))
        try:
            self.layout, self.q, self.phi, self._datasets = _select_matrices(self._h5, self.source, wavevector_q, phi_ranges)
            n_file = self._datasets[0][1].shape[0]
            self.start_frame, self.end_frame = frame_window(start_frame, end_frame, n_file, source=self.source)
            self.dt, self.dt_source = _resolve_dt(self._h5, dt, self.source)
            sides = [self._first_row_and_column_zero(dataset) for _, dataset in self._datasets]
            self._lower = [row_zero and not column_zero for row_zero, column_zero in sides]
            self._half = [row_zero or column_zero for row_zero, column_zero in sides]
        except BaseException:
            self._h5.close()
            raise

    @classmethod
    def from_config(cls, cfg, dataset=None) -> PointSource:
        """The data set ``dataset`` of a config (the same arguments as ``load_config_dataset``)."""
        path, arguments = config_dataset_arguments(cfg, dataset)
        return cls(path, **arguments)

    @property
    def n_angles(self) -> int:
        """Number of selected angles."""
        return len(self._datasets)

    @property
    def n_frames(self) -> int:
        """Frames in the window."""
        return self.end_frame - self.start_frame + 1

    @property
    def n_points(self) -> int:
        """Points of the fit, ``n_angles * N * (N - 1) / 2``."""
        return self.n_angles * self.n_frames * (self.n_frames - 1) // 2

    @property
    def t(self) -> np.ndarray:
        """Model times of the window's frames, ``k * dt`` for ``k = 0..n_frames-1`` (s)."""
        return np.arange(self.n_frames, dtype=np.float64) * self.dt

    def _first_row_and_column_zero(self, dataset) -> tuple[bool, bool]:
        """Whether the window's first row right of the diagonal, and its first column below it, are all 0.

        A stored upper half has a zero column, a lower half a zero row, a full matrix
        neither (what ``selection.is_triangular_half`` finds from the whole matrix).
        """
        first = self.start_frame - 1
        row = np.asarray(dataset[first, first + 1 : self.end_frame])
        column = np.asarray(dataset[first + 1 : self.end_frame, first])
        return bool(row.size) and not np.any(row), bool(column.size) and not np.any(column)

    def _read(self, angle: int, rows: slice, columns: slice) -> np.ndarray:
        """``stored[rows, columns]`` of an angle's dataset (file indices); a read error is an ``InputError``."""
        key, dataset = self._datasets[angle]
        try:
            return np.asarray(dataset[rows, columns])
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(
                f"{self.source}: cannot read dataset '{key}' ({exc}); the file is damaged -- rerun the correlator"
            ) from exc

    def read_rows(
        self, angle: int, row_start: int, row_stop: int, first_column: int = 0, column_stop: int | None = None
    ) -> np.ndarray:
        """Rows ``row_start:row_stop``, columns ``first_column:column_stop`` of angle ``angle``'s window, float64.

        Entries right of the diagonal are those of the full symmetric matrix; NaN or inf
        there is an ``InputError`` naming the dataset and rows.
        """
        key = self._datasets[angle][0]
        first = self.start_frame - 1
        rows = slice(first + row_start, first + row_stop)
        columns = slice(first + first_column, self.end_frame if column_stop is None else first + column_stop)
        block = self._read(angle, columns, rows).T if self._lower[angle] else self._read(angle, rows, columns)
        block = block.astype(np.float64, copy=False)
        upper = (first_column + np.arange(block.shape[1]))[None, :] > (row_start + np.arange(row_stop - row_start))[:, None]
        bad = _count_nonfinite(np.where(upper, block, 0.0))
        if bad:
            raise InputError(
                f"{self.source}: dataset '{key}' (phi = {self.phi[angle]:g} deg) has {bad} NaN/inf values in "
                f"window rows {row_start + 1}..{row_stop}; exclude that angle with phi_filtering or choose another frame window"
            )
        return block

    def full_rows(self, angle: int, row_start: int, row_stop: int, step: int = 1) -> np.ndarray:
        """Rows ``row_start:row_stop:step``, columns ``::step`` of the loaded ``c2`` (``selection.full_symmetric``), float64.

        Bit for bit those entries of the matrix ``load_xpcs`` builds: a stored half ``H``
        gives ``H[i, j] + H[j, i]`` with the diagonal halved, a full matrix its own rows.
        Reads the row block and the matching column block (strided hyperslabs of
        ``2 x k x ceil(N / step)`` values for ``k`` returned rows).
        """
        first = self.start_frame - 1
        window = slice(first, self.end_frame, step)
        rows = slice(first + row_start, first + row_stop, step)
        stored = self._read(angle, rows, window)
        if not self._half[angle]:
            return stored.astype(np.float64)
        block = np.add(stored, self._read(angle, window, rows).T, dtype=np.float64)
        frames = np.arange(row_start, row_stop, step)
        on_diagonal = frames % step == 0  # the row's own frame is one of the returned columns
        block[np.flatnonzero(on_diagonal), frames[on_diagonal] // step] *= 0.5
        return block

    def scaling(self, lag_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Per-angle ``(contrast, offset)`` equal to ``nlsq.start.scaling_from_data`` of the loaded ``c2``.

        The same medians of the same entries: the offset from the lags ``>= N - L``
        (``L = round(lag_fraction (N - 1))``, an ``L x L`` corner of the first rows), the
        contrast from the lag-1 diagonal (read in ``NOISE_READ_ROWS``-row squares) minus
        the offset.
        """
        n = self.n_frames
        long_lag = max(1, int(round(lag_fraction * (n - 1))))
        contrast, offset = np.empty(self.n_angles), np.empty(self.n_angles)
        for angle in range(self.n_angles):
            corner = self.read_rows(angle, 0, long_lag, n - long_lag)
            offset[angle] = np.median(corner[np.triu_indices(long_lag)])
            lag_one = [
                np.diagonal(
                    self.read_rows(angle, r0, min(r0 + NOISE_READ_ROWS, n - 1), r0 + 1, min(r0 + NOISE_READ_ROWS, n - 1) + 1)
                )
                for r0 in range(0, n - 1, NOISE_READ_ROWS)
            ]
            contrast[angle] = np.median(np.concatenate(lag_one)) - offset[angle]
        return contrast, offset

    def noise_sigmas(self, max_samples: int = 2_000_000) -> np.ndarray:
        """Per-angle noise levels, equal to ``estimate_noise_sigmas`` of the loaded matrices."""
        every_row = noise_row_stride(self.n_frames, max_samples) == 1
        return np.array(
            [
                noise_sigma_from_rows(
                    self.row_pairs(angle, NOISE_READ_ROWS if every_row else 2), self.n_frames, max_samples=max_samples
                )
                for angle in range(self.n_angles)
            ]
        )

    def row_pairs(self, angle: int, rows_per_read: int):
        """``row_pair(i)``: rows ``i, i + 1`` of an angle, read ``rows_per_read`` rows at a time.

        The noise estimator asks for pairs in increasing order; when it samples every row,
        one read then serves ``rows_per_read - 1`` pairs.
        """
        start, rows = 0, np.zeros((0, self.n_frames))

        def row_pair(row: int) -> np.ndarray:
            nonlocal start, rows
            if not (start <= row and row + 2 <= start + len(rows)):
                start, rows = row, self.read_rows(angle, row, min(row + max(rows_per_read, 2), self.n_frames))
            return rows[row - start : row - start + 2]

        return row_pair

    def point_blocks(self, sigma, max_points: int):
        """The fit's points in global order, in blocks of whole rows (``stream_points``)."""
        return stream_points(self.read_rows, self.n_angles, self.n_frames, sigma, max_points)

    def close(self) -> None:
        """Close the file."""
        self._h5.close()

    def __enter__(self) -> PointSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
