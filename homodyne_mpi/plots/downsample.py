"""Shrink matrices for drawing only: block means, a corrected diagonal, robust colour limits.

Nothing here touches the data that is fitted: these functions take a copy of one angle's
``c2`` (or residual) and return a smaller array for ``imshow``. A 2000 x 2000 matrix drawn
in a 4-inch panel shows at most a few hundred screen pixels per side, so block means of
``factor x factor`` frames lose nothing visible and make each figure fast to render.
"""

from __future__ import annotations

import math

import numpy as np

MAX_PIXELS = 500
"""Largest side of a drawn matrix; larger matrices are block-averaged down to this."""


def block_factor(n: int, max_pixels: int = MAX_PIXELS) -> int:
    """Smallest block size (frames per drawn pixel) that brings ``n`` down to ``max_pixels``."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return max(1, math.ceil(n / max_pixels))


def block_sums(matrix: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the finite values in ``factor x factor`` blocks (float64 arrays).

    Blocks run from index 0; a partial last block row or column sums what it has. All
    finite (the usual case) costs two passes over the matrix and no copy.
    """
    data = np.asarray(matrix)
    if data.ndim != 2:
        raise ValueError(f"block sums need a 2-D matrix, got shape {data.shape}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    rows = np.arange(0, data.shape[0], factor)
    cols = np.arange(0, data.shape[1], factor)
    if data.size == 0:
        return np.zeros((rows.size, cols.size)), np.zeros((rows.size, cols.size))
    sums = _sum_blocks(_sum_blocks(data, factor, axis=0), factor, axis=1)
    if np.isfinite(sums).all():  # a NaN or inf anywhere would show in its block's sum
        row_sizes = np.diff(np.append(rows, data.shape[0]))
        col_sizes = np.diff(np.append(cols, data.shape[1]))
        return sums, np.outer(row_sizes, col_sizes).astype(np.float64)
    finite = np.isfinite(data)
    sums = _sum_blocks(_sum_blocks(np.where(finite, data, 0.0), factor, axis=0), factor, axis=1)
    counts = _sum_blocks(_sum_blocks(finite.astype(np.float64), factor, axis=0), factor, axis=1)
    return sums, counts


def _sum_blocks(data: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Sums of ``factor`` consecutive rows (``axis=0``) or columns (``axis=1``), in float64.

    Adds ``factor`` strided slices: several times faster than ``np.add.reduceat`` on
    large matrices, as every pass streams through memory in order.
    """
    view = data if axis == 0 else data.T
    n = view.shape[0]
    whole = n // factor
    out = np.empty((-(-n // factor), view.shape[1]), dtype=np.float64)
    if whole:
        head = view[: whole * factor]
        np.copyto(out[:whole], head[0::factor])
        for offset in range(1, factor):
            out[:whole] += head[offset::factor]
    if whole * factor < n:
        out[whole] = view[whole * factor :].sum(axis=0, dtype=np.float64)
    return out if axis == 0 else out.T


def diagonal_block_sums(values: np.ndarray, factor: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the finite ``values`` of a diagonal (one per row), in the blocks of
    :func:`block_sums` for a matrix of ``shape``: nonzero only on the block diagonal."""
    n_rows = -(-shape[0] // factor)
    n_cols = -(-shape[1] // factor)
    sums = np.zeros((n_rows, n_cols))
    counts = np.zeros((n_rows, n_cols))
    diagonal = np.asarray(values, dtype=np.float64)[: min(shape)]
    finite = np.isfinite(diagonal)
    block = np.arange(diagonal.size) // factor
    np.add.at(sums, (block, block), np.where(finite, diagonal, 0.0))
    np.add.at(counts, (block, block), finite.astype(np.float64))
    return sums, counts


def block_mean(matrix: np.ndarray, factor: int, *, diagonal: np.ndarray | None = None, skip_diagonal: bool = False) -> np.ndarray:
    """Mean over ``factor x factor`` blocks, ignoring NaN; a partial last block averages what it has.

    ``diagonal`` (one value per row) stands in for the matrix's diagonal, and
    ``skip_diagonal`` leaves the diagonal out of the means, both without copying the
    matrix. Returns a float64 array of shape ``(ceil(n0/factor), ceil(n1/factor))``; a
    block with no finite value is NaN.
    """
    data = np.asarray(matrix)
    sums, counts = block_sums(data, factor)
    if diagonal is not None or skip_diagonal:
        old_sums, old_counts = diagonal_block_sums(np.diagonal(data), factor, data.shape)
        sums -= old_sums
        counts -= old_counts
        if diagonal is not None:
            new_sums, new_counts = diagonal_block_sums(diagonal, factor, data.shape)
            sums += new_sums
            counts += new_counts
    return mean_of(sums, counts)


def mean_of(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sums / counts``, NaN where a block has no value."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0.5, sums / np.maximum(counts, 1.0), np.nan)


def block_edges(t: np.ndarray, factor: int) -> tuple[float, float, float]:
    """Edges (s) of a time axis of frames ``t`` drawn as blocks of ``factor`` frames.

    Frames are pixel centres, so the data run from ``t[0] - dt/2`` to ``t[-1] + dt/2``.
    Returns ``(start, blocks_end, data_end)``: give ``(start, blocks_end)`` to ``imshow`` as
    the extent (every block drawn ``factor * dt`` wide, a partial last block included) and
    clip the axis at ``data_end``, so every full block sits exactly on its frames.
    """
    times = np.asarray(t, dtype=np.float64)
    if times.size == 0:
        return 0.0, 1.0, 1.0
    step = float(times[1] - times[0]) if times.size > 1 else 1.0
    n_blocks = math.ceil(times.size / factor)
    start = float(times[0] - 0.5 * step)
    return start, start + n_blocks * factor * step, float(times[-1] + 0.5 * step)


def corrected_diagonal(c2: np.ndarray) -> np.ndarray:
    """Stand-in values for the diagonal of ``c2`` (the speckle-noise spike), one per row.

    The diagonal ``t1 == t2`` is never fitted; for drawing, each diagonal element takes the
    mean of the adjacent off-diagonal elements ``c2[i, i+-1]`` and ``c2[i+-1, i]``. Pass
    the result to :func:`block_mean` as ``diagonal``.
    """
    data = np.asarray(c2)
    n = min(data.shape)
    if n < 2:
        return np.diagonal(data).astype(np.float64)
    upper = np.diagonal(data, offset=1)[: n - 1].astype(np.float64)  # c2[i, i+1]
    lower = np.diagonal(data, offset=-1)[: n - 1].astype(np.float64)  # c2[i+1, i]
    neighbour = np.empty(n)
    neighbour[0] = 0.5 * (upper[0] + lower[0])
    neighbour[-1] = 0.5 * (upper[-1] + lower[-1])
    if n > 2:
        neighbour[1:-1] = 0.25 * (upper[:-1] + lower[:-1] + upper[1:] + lower[1:])
    return neighbour


def robust_limits(*arrays: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Common colour limits: the ``low``/``high`` percentiles of the finite values of all arrays."""
    finite = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    values = np.concatenate([a[np.isfinite(a)] for a in finite]) if finite else np.empty(0)
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(x) for x in np.percentile(values, [low, high]))
    if not vmax > vmin:
        pad = max(abs(vmin) * 1e-3, 1e-12)
        vmin, vmax = vmin - pad, vmax + pad
    return vmin, vmax


def symmetric_limit(array: np.ndarray, percentile: float = 99.5) -> float:
    """Half-width of a colour scale centred on 0: the ``percentile`` of ``|array|`` (finite values)."""
    values = np.abs(np.asarray(array, dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    limit = float(np.percentile(values, percentile))
    return limit if limit > 0 else 1.0
