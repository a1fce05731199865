"""Pure selection steps between the stored bins and the fitted data set: nearest q, angle ranges,
frame window, and the full symmetric matrix from the half the correlator stores.

Angles are directions: ``phi`` lies in ``[lo, hi]`` when ``phi + 360 k`` does for some integer ``k``, so
angles and ranges may use ``[-180, 180]`` or ``[0, 360)`` (``[170, 190]`` holds ``-175``, ``[-10, 10]``
holds ``355``); ``hi < lo`` wraps through 360 (``[350, 10]`` is ``[-10, 10]``), a range at least 360
degrees wide holds every angle. Bounds are inclusive within 1e-9 degree; stored angles are never rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from homodyne_mpi.errors import InputError

ANGLE_TOLERANCE_DEG = 1e-9
"""Slack on inclusive angle-range bounds, degrees."""

Q_MATCH_RTOL = 1e-6
"""Bins whose q lies within this relative distance of the nearest q belong to it."""


def select_nearest_q(q_per_bin: np.ndarray, target_q: float) -> tuple[np.ndarray, float]:
    """Indices of the bins (one per angle) within ``Q_MATCH_RTOL`` of the q nearest ``target_q``
    (1/Angstrom), and that q; of two equally near, the smaller."""
    q_per_bin = np.asarray(q_per_bin, dtype=np.float64).reshape(-1)
    if q_per_bin.size == 0:
        raise ValueError("select_nearest_q needs at least one bin")
    distance = np.abs(q_per_bin - float(target_q))
    q_selected = float(q_per_bin[distance == distance.min()].min())
    chosen = np.flatnonzero(np.abs(q_per_bin - q_selected) <= Q_MATCH_RTOL * abs(q_selected))
    return chosen, q_selected


def range_bounds(angle_range) -> tuple[float, float]:
    """``(min_angle, max_angle)`` of an ``AngleRange``-like object or a 2-sequence."""
    if hasattr(angle_range, "min_angle") and hasattr(angle_range, "max_angle"):
        return float(angle_range.min_angle), float(angle_range.max_angle)
    lo, hi = angle_range
    return float(lo), float(hi)


def angles_in_ranges(phi_deg: np.ndarray, ranges: Iterable) -> np.ndarray:
    """Which angles (degrees) lie in at least one inclusive range, modulo 360 degrees (module
    docstring); ``ranges`` holds ``AngleRange`` objects or ``(min, max)`` pairs."""
    phi = np.asarray(phi_deg, dtype=np.float64).reshape(-1)
    mask = np.zeros(phi.shape, dtype=bool)
    for angle_range in ranges:
        lo, hi = range_bounds(angle_range)
        width = hi - lo + 360.0 if hi < lo else hi - lo
        if width >= 360.0 - ANGLE_TOLERANCE_DEG:
            mask[:] = True
            continue
        # Distance from the range start going counter-clockwise, in [0, 360).
        along = np.mod(phi - lo, 360.0)
        # An angle just below ``lo`` (within tolerance) maps near 360: count it in.
        mask |= (along <= width + ANGLE_TOLERANCE_DEG) | (along >= 360.0 - ANGLE_TOLERANCE_DEG)
    return mask


def format_ranges(ranges: Iterable) -> str:
    """``[-10, 10], [170, 190]`` for messages."""
    parts = [f"[{lo:g}, {hi:g}]" for lo, hi in map(range_bounds, ranges)]
    return ", ".join(parts) if parts else "(none)"


def frame_window(
    start_frame: int | None, end_frame: int | None, n_frames: int, *, source: str = "the data file"
) -> tuple[int, int]:
    """Resolved 1-based inclusive ``(start_frame, end_frame)`` of at least two frames within
    ``1..n_frames`` (``None``: the first / last frame), or :class:`InputError` naming the valid range."""
    start = 1 if start_frame is None else start_frame
    end = n_frames if end_frame is None else end_frame
    for name, value in (("start_frame", start), ("end_frame", end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(
                f"{source}: analyzer_parameters.{name} is {value!r}, not a whole frame number; use an integer in 1..{n_frames}"
            )
    start, end = int(start), int(end)
    if not (1 <= start < end <= n_frames):
        raise InputError(
            f"{source}: frames out of range: analyzer_parameters.start_frame={start}, end_frame={end}, but the matrices hold "
            f"{n_frames} frames; use 1 <= start_frame < end_frame <= {n_frames} (frames are 1-based, inclusive)"
        )
    return start, end


def is_triangular_half(matrix: np.ndarray) -> bool:
    """True when one strict triangle is all zero: a stored half (the correlator stores the upper
    one with the diagonal), never a full measured ``c2`` (about 1 off the diagonal). Row by row,
    stopping at the first non-zero entry: a full matrix is recognised after one row."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {matrix.shape}")
    rows = range(matrix.shape[0])
    return not any(np.any(matrix[row, :row]) for row in rows) or not any(np.any(matrix[row, row + 1 :]) for row in rows)


def full_symmetric(stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Full symmetric float64 matrix from a stored half ``H`` (``C = H + H^T``, diagonal halved: exact
    in float64) or a full matrix (copied); ``out`` (float64, same shape) avoids any other N x N temporary."""
    stored = np.asarray(stored)
    if out is None:
        out = np.empty(stored.shape, dtype=np.float64)
    if is_triangular_half(stored):
        np.add(stored, stored.T, out=out, dtype=np.float64)
        if out.flags.c_contiguous:
            out.reshape(-1)[:: out.shape[0] + 1] *= 0.5
        else:
            np.fill_diagonal(out, 0.5 * np.diagonal(out))
    else:
        out[...] = stored
    return out
