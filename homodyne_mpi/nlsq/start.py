"""Starting values of a fit: per-angle contrast and offset read off the data."""

from __future__ import annotations

import numpy as np


def scaling_from_data(c2: np.ndarray, lag_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Rough per-angle ``(contrast, offset)`` from ``c2`` ``(n_angles, N, N)``: the offset is the median
    of the last ``lag_fraction`` of lags, the contrast the median of lag 1 minus the offset."""
    n_angles, n_frames, _ = c2.shape
    long_lag = max(1, int(round(lag_fraction * (n_frames - 1))))
    contrast = np.empty(n_angles)
    offset = np.empty(n_angles)
    for angle in range(n_angles):
        matrix = c2[angle]
        far = np.concatenate([np.diagonal(matrix, k) for k in range(n_frames - long_lag, n_frames)])
        offset[angle] = np.median(far)
        contrast[angle] = np.median(np.diagonal(matrix, 1)) - offset[angle]
    return contrast, offset
