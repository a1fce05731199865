"""Shrink matrices for drawing only: block means, a corrected diagonal, robust colour limits.

Nothing here touches the fitted data. A 2000 x 2000 matrix in a 4-inch panel shows a few
hundred screen pixels per side, so ``factor x factor`` block means lose nothing visible.
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
    """Sums and counts of the finite values in ``factor x factor`` blocks from index 0 (float64 arrays);
    a partial last block sums what it has. All finite (the usual case): two passes, no copy."""
    data = np.asarray(matrix)
    if data.ndim != 2:
        raise ValueError(f"block sums need a 2-D matrix, got shape {data.shape}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    rows, cols = np.arange(0, data.shape[0], factor), np.arange(0, data.shape[1], factor)
    if data.size == 0:
        return np.zeros((rows.size, cols.size)), np.zeros((rows.size, cols.size))
    sums = _sum_blocks(_sum_blocks(data, factor, axis=0), factor, axis=1)
    if np.isfinite(sums).all():  # a NaN or inf anywhere would show in its block's sum
        row_sizes, col_sizes = (np.diff(np.append(starts, size)) for starts, size in zip((rows, cols), data.shape))
        return sums, np.outer(row_sizes, col_sizes).astype(np.float64)
    finite = np.isfinite(data)
    sums = _sum_blocks(_sum_blocks(np.where(finite, data, 0.0), factor, axis=0), factor, axis=1)
    counts = _sum_blocks(_sum_blocks(finite.astype(np.float64), factor, axis=0), factor, axis=1)
    return sums, counts


def _sum_blocks(data: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Sums of ``factor`` consecutive rows (``axis=0``) or columns (``axis=1``), in float64, as ``factor``
    strided slices added: several times faster than ``np.add.reduceat``, each pass streams in order."""
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
    blocks = (-(-shape[0] // factor), -(-shape[1] // factor))
    sums, counts = np.zeros(blocks), np.zeros(blocks)
    diagonal = np.asarray(values, dtype=np.float64)[: min(shape)]
    finite = np.isfinite(diagonal)
    block = np.arange(diagonal.size) // factor
    np.add.at(sums, (block, block), np.where(finite, diagonal, 0.0))
    np.add.at(counts, (block, block), finite.astype(np.float64))
    return sums, counts


def block_mean(matrix: np.ndarray, factor: int, *, diagonal: np.ndarray | None = None, skip_diagonal: bool = False) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of the finite values (float64, NaN for none), a partial last
    block averaging what it has; ``diagonal`` (one per row) replaces, ``skip_diagonal`` drops the diagonal."""
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
    """Edges (s) of a time axis of frames ``t`` (pixel centres) drawn as blocks of ``factor`` frames:
    ``(start, blocks_end)`` is the ``imshow`` extent (every block ``factor * dt`` wide), and the axis is
    clipped at ``data_end`` (``t[-1] + dt/2``), so every full block sits exactly on its frames."""
    times = np.asarray(t, dtype=np.float64)
    if times.size == 0:
        return 0.0, 1.0, 1.0
    step = float(times[1] - times[0]) if times.size > 1 else 1.0
    start = float(times[0] - 0.5 * step)
    return start, start + math.ceil(times.size / factor) * factor * step, float(times[-1] + 0.5 * step)


def corrected_diagonal(c2: np.ndarray) -> np.ndarray:
    """Stand-in values for the diagonal of ``c2`` (the speckle-noise spike, never fitted), one per row:
    the mean of the adjacent off-diagonal elements ``c2[i, i+-1]`` and ``c2[i+-1, i]``."""
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
    limit = float(np.percentile(values, percentile)) if values.size else 0.0
    return limit if limit > 0 else 1.0
