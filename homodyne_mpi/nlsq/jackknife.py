"""Frame-block jackknife: standard errors that respect the correlations of two-time data.

Every ``c2(t1, t2)`` shares frame ``t1`` with its whole row and ``t2`` with its whole
column, so the speckle noise of the points is correlated along rows and columns and the
model covariance ``(J^T J)^-1 chi2_red``, which treats the points as independent, is far
too small. The delete-a-block jackknife resamples whole frames instead:

1. split the frames ``0..N-1`` into ``K`` contiguous blocks (``jackknife_blocks``);
2. for each block ``b``, drop every point whose ``t1`` or ``t2`` lies in it and refit,
   starting from the full-data optimum, for at most ``jackknife_iterations`` steps;
3. ``cov = (K-1)/K * sum_b (theta_b - mean)(theta_b - mean)^T``.

The unit being resampled is the frame, as in the jackknife of a U-statistic: for noise
shared along a frame's row and column this is the consistent estimate. For independent
noise it is conservative (a point off the block diagonal is left out by two replicates,
which about doubles the variance: measured ratios to the model error are in
docs/uncertainty.md).

The refits start at the optimum, where Gauss-Newton converges in a few steps, so they
start with a tiny damping (``REFIT_DAMPING``); the strongly correlated physical
parameters (``D0``, ``alpha``, ``D_offset``) would otherwise crawl along their valley
and leave the replicates unconverged.

Distribution: every replicate is an ordinary distributed fit, so all ranks work on each
replicate in turn (their points stay where they are; the kernel masks the dropped
frames with zero weight, without recompiling). With one rank the replicates simply run
one after the other. The replicates also give bands for ``D(t)`` and ``gamma_dot(t)``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .fit import NO_EXCLUSION, DistributedObjective, NLSQProblem
from .solver import LMOptions, levenberg_marquardt

log = logging.getLogger(__name__)


@dataclass
class JackknifeResult:
    """Replicate parameters and the covariance they give."""

    blocks: np.ndarray
    """``(K, 2)`` frame ranges ``[start, stop)`` that were left out."""
    replicates: np.ndarray
    """``(K, P)`` refitted parameters, one row per left-out block."""
    covariance: np.ndarray
    """``(P, P)`` delete-a-block jackknife covariance."""
    converged: np.ndarray
    """``(K,)`` whether each refit met a tolerance within its iteration budget."""
    seconds: float

    @property
    def std(self) -> np.ndarray:
        """Jackknife standard deviation of each parameter."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))


def frame_blocks(n_frames: int, n_blocks: int) -> np.ndarray:
    """``(K, 2)`` contiguous ``[start, stop)`` ranges covering the frames, sizes within 1."""
    n_blocks = int(min(max(n_blocks, 2), n_frames))
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(np.int32)
    return np.stack([edges[:-1], edges[1:]], axis=1)


REFIT_DAMPING = 1e-9
"""Initial LM damping of the refits (near Gauss-Newton: they start at the optimum)."""


def scaled_inverse(hessian: np.ndarray) -> np.ndarray:
    """``H^-1`` computed on the diagonally scaled matrix (parameters differ by ~1e8 in scale)."""
    scale = np.sqrt(np.maximum(np.diag(hessian), 1e-300))
    return np.linalg.pinv(hessian / np.outer(scale, scale), rcond=1e-15, hermitian=True) / np.outer(scale, scale)


def jackknife_covariance(replicates: np.ndarray) -> np.ndarray:
    """``(K-1)/K * sum (theta_b - mean)(theta_b - mean)^T`` of ``(K, P)`` replicates."""
    n_blocks = replicates.shape[0]
    deviations = replicates - replicates.mean(axis=0)
    return (n_blocks - 1) / n_blocks * deviations.T @ deviations


def run_jackknife(objective: DistributedObjective, problem: NLSQProblem, theta_hat: np.ndarray, options) -> JackknifeResult:
    """Refit with each frame block left out and build the covariance (collective)."""
    start = time.perf_counter()
    blocks = frame_blocks(problem.spec.n_frames, options.jackknife_blocks)
    lm_options = LMOptions(
        max_iterations=int(options.jackknife_iterations),
        xtol=options.xtol,
        gtol=options.gtol,
        ftol=options.ftol,
        initial_damping=REFIT_DAMPING,
    )
    free = problem.free
    replicates, converged = [], []
    try:
        for index, (first, stop) in enumerate(blocks):
            objective.excluded_frames = np.array([first, stop], dtype=np.int32)
            refit = levenberg_marquardt(objective, theta_hat, problem.lower, problem.upper, free, lm_options, quiet=True)
            replicates.append(refit.theta)
            converged.append(refit.converged)
            log.info(
                "jackknife %d/%d (frames %d..%d left out): %d iterations, %s",
                index + 1,
                len(blocks),
                first + 1,
                stop,
                refit.iterations,
                "converged" if refit.converged else refit.reason,
            )
    finally:
        objective.excluded_frames = NO_EXCLUSION
    replicates = np.asarray(replicates)
    return JackknifeResult(
        blocks=blocks,
        replicates=replicates,
        covariance=jackknife_covariance(replicates),
        converged=np.asarray(converged),
        seconds=time.perf_counter() - start,
    )
