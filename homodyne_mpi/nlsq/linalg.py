"""Covariance algebra shared by the fit, the jackknife and the reports (NumPy, pure)."""

from __future__ import annotations

import numpy as np


def scaled_inverse(hessian: np.ndarray) -> np.ndarray:
    """``H^-1`` computed on the diagonally scaled matrix (parameters differ by ~1e8 in scale)."""
    scale = np.sqrt(np.maximum(np.diag(hessian), 1e-300))
    return np.linalg.pinv(hessian / np.outer(scale, scale), rcond=1e-15, hermitian=True) / np.outer(scale, scale)


def covariance_from_hessian(hessian: np.ndarray, free: np.ndarray, reduced_chi2: float) -> np.ndarray:
    """``(J^T J)^-1 * reduced_chi2`` over the free parameters, zero-padded to full size."""
    free = np.asarray(free, dtype=bool)
    covariance = np.zeros_like(hessian)
    covariance[np.ix_(free, free)] = scaled_inverse(hessian[np.ix_(free, free)]) * reduced_chi2
    return covariance


def psd_part(matrix: np.ndarray) -> np.ndarray:
    """The positive semi-definite part of a symmetric matrix (negative eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.clip(values, 0.0, None)) @ vectors.T


def psd_part_keeping_variances(matrix: np.ndarray) -> np.ndarray:
    """A positive semi-definite matrix with diagonal ``max(0, matrix_ii)`` and the
    correlations of ``psd_part(matrix)``: eigenvalue clipping alone raises every variance
    of a zero-mean noisy difference, while ``max(0, M_ii)`` keeps its median unbiased."""
    clipped = psd_part(matrix)
    target = np.clip(np.diag(matrix), 0.0, None)
    return correlation_matrix(clipped) * np.sqrt(np.outer(target, target))


def correlation_matrix(covariance: np.ndarray) -> np.ndarray:
    """``cov_ij / (std_i std_j)``; rows and columns of zero-variance (fixed) parameters are 0."""
    std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    positive = std > 0
    correlation = np.zeros_like(covariance)
    index = np.ix_(positive, positive)
    correlation[index] = covariance[index] / np.outer(std[positive], std[positive])
    np.fill_diagonal(correlation, positive.astype(float))
    return np.clip(correlation, -1.0, 1.0)
