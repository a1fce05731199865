"""A robust, cheap estimate of the noise level of a measured two-time matrix.

Along a fixed lag the model changes slowly, so ``d = c2[i, j] - c2[i+1, j+1]`` is the difference of
two noise values (std ``sigma * sqrt(2)``); the estimate is their normal-consistent median absolute
deviation, robust to fast model changes (aging, shear) and outliers::

    sigma = median(|d - median(d)|) / 0.6745 / sqrt(2)

Only the strict upper triangle enters, from 4 frames on without lag 1 (speckle spike; neighbouring
frames share detector and speckle correlations); rows are sub-sampled evenly above ``max_samples``
differences. The floor ``max(1e-6 * median(|c2|), 1e-12)`` keeps a noiseless matrix's weights finite.
Within a few percent for independent Gaussian noise once a few thousand differences are available
(~4,800 at 100 frames); noise correlated between neighbouring frames is underestimated.
"""

from __future__ import annotations

import math

import numpy as np

MAD_TO_SIGMA = 1.0 / 0.6744897501960817
"""Ratio of the standard deviation to the median absolute deviation of a normal law."""

NOISE_FLOOR_RELATIVE = 1e-6
"""Smallest returned noise level, relative to the median ``|c2|``."""

NOISE_FLOOR_ABSOLUTE = 1e-12
"""Smallest returned noise level in absolute terms (for an all-zero matrix)."""


def estimate_noise_sigma(c2_matrix: np.ndarray, *, max_samples: int = 2_000_000) -> float:
    """Noise level (``c2`` units) of one angle's ``(N, N)`` two-time matrix, ``N >= 3`` (module
    docstring); only its upper triangle is read."""
    matrix = np.asarray(c2_matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"estimate_noise_sigma needs a square matrix, got shape {matrix.shape}")
    return noise_sigma_from_rows(lambda row: matrix[row : row + 2], matrix.shape[0], max_samples=max_samples)


def noise_row_stride(n: int, max_samples: int = 2_000_000) -> int:
    """Step between the rows the estimator samples in an ``(n, n)`` matrix (1: every row)."""
    min_lag = 2 if n >= 4 else 1
    total = (n - 1 - min_lag) * (n - min_lag) // 2
    return max(1, math.ceil(total / max_samples))


def noise_sigma_from_rows(row_pair, n: int, *, max_samples: int = 2_000_000) -> float:
    """``estimate_noise_sigma`` of an ``(n, n)`` matrix seen only through ``row_pair(i)``, which
    returns rows ``i`` and ``i + 1`` (only entries right of the diagonal are used), asked only
    for the sampled rows: a streamed reader needs two rows at a time, not the matrix."""
    if n < 3:
        raise ValueError(f"estimate_noise_sigma needs at least 3 frames, got {n}")
    min_lag = 2 if n >= 4 else 1
    last_row = n - 2 - min_lag  # the last row i with a lag-min_lag neighbour pair
    row_stride = noise_row_stride(n, max_samples)
    differences = []
    values = []
    for row in range(0, last_row + 1, row_stride):
        pair = row_pair(row)
        upper = pair[0, row + min_lag : n - 1]
        lower_neighbour = pair[1, row + 1 + min_lag : n]
        differences.append(np.asarray(upper, dtype=np.float64) - lower_neighbour)
        values.append(np.abs(upper))  # a copy: a view would keep the reader's whole row block alive
    d = np.concatenate(differences)
    level = float(np.median(np.concatenate(values)))
    d -= np.median(d)
    sigma = float(np.median(np.abs(d))) * MAD_TO_SIGMA / math.sqrt(2.0)
    floor = max(NOISE_FLOOR_RELATIVE * level, NOISE_FLOOR_ABSOLUTE)
    if not math.isfinite(sigma):
        raise ValueError("estimate_noise_sigma got a matrix with NaN or inf")
    return max(sigma, floor)


def estimate_noise_sigmas(c2: np.ndarray, *, max_samples: int = 2_000_000) -> np.ndarray:
    """Per-angle noise levels of a ``(n_phi, N, N)`` stack (see :func:`estimate_noise_sigma`)."""
    c2 = np.asarray(c2)
    if c2.ndim != 3:
        raise ValueError(f"estimate_noise_sigmas needs a (n_phi, N, N) stack, got shape {c2.shape}")
    return np.array([estimate_noise_sigma(matrix, max_samples=max_samples) for matrix in c2])
