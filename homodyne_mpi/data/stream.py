"""Read a data set's matrices a block of rows at a time, never the whole matrix.

:class:`PointSource` selects what :func:`~homodyne_mpi.data.loader.load_xpcs` selects but keeps the file
open and reads row blocks on request. Rows of the full symmetric ``C`` are ``C[i, j > i] = stored[i, j]``
for an upper half or a full matrix, ``stored[j, i]`` for a lower half (read as column blocks).
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
            self.start_frame, self.end_frame = frame_window(
                start_frame, end_frame, self._datasets[0][1].shape[0], source=self.source
            )
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
        """Whether the window's first row right of the diagonal, and its first column below it, are all 0
        (an upper half has a zero column, a lower half a zero row, a full matrix neither)."""
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
        """Rows ``row_start:row_stop``, columns ``first_column:column_stop`` of angle ``angle``'s window, float64;
        defined (and checked for NaN or inf) right of the diagonal, where they are the full symmetric matrix's."""
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
        """Rows ``row_start:row_stop:step``, columns ``::step`` of the loaded ``c2``, float64, bit for bit
        (``H[i, j] + H[j, i]``, diagonal halved, for a half ``H``), from a row and a column block."""
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
        """Per-angle ``(contrast, offset)`` equal to ``nlsq.start.scaling_from_data`` of the loaded ``c2``: the
        offset the median of lags ``>= N - L`` (``L = round(lag_fraction (N - 1))``), the contrast the median of
        the lag-1 diagonal minus the offset."""
        n = self.n_frames
        long_lag = max(1, int(round(lag_fraction * (n - 1))))
        contrast, offset = np.empty(self.n_angles), np.empty(self.n_angles)
        for angle in range(self.n_angles):
            corner = self.read_rows(angle, 0, long_lag, n - long_lag)
            offset[angle] = np.median(corner[np.triu_indices(long_lag)])
            lag_one = []
            for r0 in range(0, n - 1, NOISE_READ_ROWS):  # NOISE_READ_ROWS-row squares along the diagonal
                r1 = min(r0 + NOISE_READ_ROWS, n - 1)
                lag_one.append(np.diagonal(self.read_rows(angle, r0, r1, r0 + 1, r1 + 1)))
            contrast[angle] = np.median(np.concatenate(lag_one)) - offset[angle]
        return contrast, offset

    def noise_sigmas(self, max_samples: int = 2_000_000) -> np.ndarray:
        """Per-angle noise levels, equal to ``estimate_noise_sigmas`` of the loaded matrices."""
        rows_per_read = NOISE_READ_ROWS if noise_row_stride(self.n_frames, max_samples) == 1 else 2
        pairs = (self.row_pairs(angle, rows_per_read) for angle in range(self.n_angles))
        return np.array([noise_sigma_from_rows(row_pair, self.n_frames, max_samples=max_samples) for row_pair in pairs])

    def row_pairs(self, angle: int, rows_per_read: int):
        """``row_pair(i)``: rows ``i, i + 1`` of an angle, read ``rows_per_read`` rows at a time (asked
        in increasing order, one read serves ``rows_per_read - 1`` pairs when every row is sampled)."""
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
