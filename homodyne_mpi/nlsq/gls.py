"""The NLSQ fit under frame-shared noise: generalised least squares over every rank's points.

With ``optimization.nlsq.noise_model: frame_shared`` the fit does not treat the points as
independent. Per angle ``a`` the weighted residuals (noise units) have the covariance
``s_a^2 (I + gamma A_a A_a^T)``: independent point noise and one term per frame shared by
every point on that frame's row and column (``nlsq/frame_noise.py``, where the Woodbury
identities are written out). After the ordinary least-squares (OLS) fit:

1. ``gamma`` and each ``s_a^2`` are estimated by maximum likelihood at the OLS residuals;
2. Levenberg-Marquardt on the GLS cost ``r^T Sigma^-1 r`` from the OLS optimum;
3. ``gamma`` and ``s_a^2`` again at that optimum, and a second GLS fit;
4. the estimate once more, and the covariance ``(J^T Sigma^-1 J)^-1`` there.

Every evaluation is one pass over the points (``kernels.chunk_frame_noise_rows``: per angle the
Gram matrix of the weighted design and per angle and frame the sums of its rows), added in the
fixed chunk order like the fit's own sums, so the answer has the same bits on any number of
ranks. The frame pattern ``A_a^T A_a`` is the closed form of a full upper triangle when each
angle's points are every pair of the frames they use (what ``upper_triangle_points`` gives);
otherwise it is counted from all points, gathered on every rank (``MAX_DENSE_FRAMES``).
"""

from __future__ import annotations

import logging
import time

import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from .fit import NLSQProblem, NLSQResult, lm_options, result_from_lm
from .frame_noise import (
    AngleFramePattern,
    FrameSums,
    estimate_frame_noise_ratio,
    frame_gram,
    frame_patterns,
    full_triangle_pattern,
    gls_normal_equations,
)
from .kernels import chunk_frame_noise_rows
from .linalg import covariance_from_hessian
from .solver import Evaluation, levenberg_marquardt

log = logging.getLogger(__name__)

MAX_DENSE_FRAMES = 4000
"""Most frames for a frame pattern that is not a full triangle (its ``N x N`` matrix per angle)."""

GLS_ROUNDS = 2
"""GLS fits, each after a fresh estimate of ``gamma`` and ``s_a^2``."""


class FrameNoiseObjective:
    """``theta -> (J^T Sigma^-1 J, J^T Sigma^-1 r, cost, cost)`` over every rank's points, at the
    current ``gamma`` and per-angle ``variance`` (``estimate`` sets both); wraps the fit's
    ``DistributedObjective`` (its points, chunks, ordered reduction and pass count)."""

    def __init__(self, objective) -> None:
        self.objective = objective
        setup = objective.setup
        self.n_angles, self.n_frames = setup.layout.n_angles, setup.spec.n_frames
        self.n_local = setup.n_physical + 3  # physical, contrast, offset, residual
        self.gamma = 0.0
        self.variance = np.ones(self.n_angles)
        self.patterns: list[AngleFramePattern] | None = None
        self.columns = self._parameter_columns(setup, np.asarray(objective.pair_of_angle))

    @staticmethod
    def _parameter_columns(setup, pair_of_angle: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per angle ``(local, full)``: the design columns of that angle and their places in the
        parameter vector (contrasts, then offsets, then physical; no pair columns when not fitted)."""
        n_pairs, n_phys = setup.n_pairs, setup.n_physical
        physical = np.arange(n_phys)
        out = []
        for a in range(setup.layout.n_angles):
            if n_pairs:
                local = np.concatenate([physical, [n_phys, n_phys + 1]])
                full = np.concatenate([2 * n_pairs + physical, [pair_of_angle[a], n_pairs + pair_of_angle[a]]])
            else:
                local, full = physical, 2 * n_pairs + physical
            out.append((local, full))
        return out

    def sums(self, theta: np.ndarray) -> FrameSums:
        """The per-angle sums (``frame_noise.FrameSums``) at ``theta`` in parameter-vector columns (one pass)."""
        objective = self.objective
        start = time.perf_counter()
        rows = chunk_frame_noise_rows(
            jnp.asarray(theta, dtype=jnp.float64), objective.phi, objective.pair_of_angle, objective.block, setup=objective.setup
        )
        total = objective.reduce(np.asarray(rows), start)
        q, n_angles, n_frames = self.n_local, self.n_angles, self.n_frames
        grams, rest = np.split(total, [n_angles * q * q])
        grams = grams.reshape(n_angles, q, q)
        frames = rest[: n_angles * n_frames * (q + 1)].reshape(n_angles, n_frames, q + 1)
        counts = rest[n_angles * n_frames * (q + 1) :]
        if self.patterns is None:
            self.patterns = self._patterns(frames[:, :, q], counts)
        n_params = len(theta)
        jtj = np.zeros((n_angles, n_params, n_params))
        jtr = np.zeros((n_angles, n_params))
        frame_jacobian = np.zeros((n_angles, n_frames, n_params))
        residual = q - 1
        for a, (local, full) in enumerate(self.columns):
            jtj[a][np.ix_(full, full)] = grams[a][np.ix_(local, local)]
            jtr[a][full] = grams[a][local, residual]
            frame_jacobian[a][:, full] = frames[a][:, local]
        return FrameSums(
            jtj=jtj,
            jtr=jtr,
            rtr=grams[:, residual, residual].copy(),
            frame_jacobian=frame_jacobian,
            frame_residual=frames[:, :, residual].copy(),
            n_points=np.rint(counts).astype(np.int64),
        )

    def _patterns(self, frame_counts: np.ndarray, counts: np.ndarray) -> list[AngleFramePattern]:
        """Each angle's frame pattern: the closed form when its points are every pair of the frames
        they touch (each of ``m`` frames on ``m - 1`` points, ``m (m - 1) / 2`` points), else counted."""
        patterns: list[AngleFramePattern | None] = []
        for a in range(self.n_angles):
            used = frame_counts[a] > 0
            m = int(np.count_nonzero(used))
            full = m >= 2 and np.all(frame_counts[a][used] == m - 1) and counts[a] == m * (m - 1) / 2
            patterns.append(full_triangle_pattern(self.n_frames, m) if full else None)
        if all(p is not None for p in patterns):
            return [p for p in patterns if p is not None]
        if self.n_frames > MAX_DENSE_FRAMES:
            raise InputError(
                f"noise_model frame_shared: the points of some angle are not every pair of its frames and the data have "
                f"{self.n_frames} frames (at most {MAX_DENSE_FRAMES} for a counted frame pattern) -- "
                "select a frame window without gaps, or use optimization.nlsq.noise_model: independent"
            )
        log.info("frame-shared noise: counting the frame pattern of angles that are not full triangles")
        gram = frame_gram(*self._all_points(), n_angles=self.n_angles, n_frames=self.n_frames)
        counted = frame_patterns(gram)
        return [p if p is not None else counted[a] for a, p in enumerate(patterns)]

    def _all_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(angle, frame_i, frame_j)`` of every rank's points of positive weight, in rank order (collective)."""
        angle, frame_i, frame_j, _, weight = (np.asarray(column).ravel() for column in self.objective.block)
        real = weight > 0
        comm = self.objective.comm
        return tuple(
            comm.allgather_rows(np.asarray(x[real], dtype=np.float64)).astype(np.int64) for x in (angle, frame_i, frame_j)
        )

    def frame_patterns(self) -> list[AngleFramePattern]:
        """The frame patterns, known after the first ``sums``."""
        assert self.patterns is not None, "sums() sets the frame patterns"
        return self.patterns

    def estimate(self, theta: np.ndarray) -> Evaluation:
        """Set ``gamma`` and the per-angle ``variance`` to their maximum likelihood at ``theta``'s residuals;
        returns the GLS evaluation at ``theta`` under them, from the same pass."""
        sums = self.sums(theta)
        self.gamma, self.variance = estimate_frame_noise_ratio(sums, self.frame_patterns())
        self.variance = np.where(np.isfinite(self.variance), self.variance, 1.0)
        return self.evaluation(sums)

    def evaluation(self, sums: FrameSums) -> Evaluation:
        """The GLS normal equations and cost of ``sums`` at the current ``gamma`` and ``variance``."""
        hessian, gradient, cost = gls_normal_equations(sums, self.frame_patterns(), self.gamma, self.variance)
        return hessian, gradient, cost, cost

    def __call__(self, theta: np.ndarray) -> Evaluation:
        """The GLS normal equations and cost at ``theta`` (``frame_noise.gls_normal_equations``)."""
        return self.evaluation(self.sums(theta))


REFITTED = ("theta", "covariance", "converged", "reason", "iterations", "chi2", "hessian", "at_bound", "projected_gradient")
"""The fields of the OLS result that the GLS fit replaces."""


def refit_frame_shared(result: NLSQResult, problem: NLSQProblem, options) -> NLSQResult:
    """Replace the OLS ``result`` (in place) by the GLS fit under frame-shared noise (module
    docstring): its values, covariance ``(J^T Sigma^-1 J)^-1``, ``chi2`` (the GLS cost) and flags;
    ``frame_noise`` records ``gamma``, the per-angle variances and the OLS fit it started from,
    and ``history`` gets the GLS iterations. Collective; returns ``result``."""
    start = time.perf_counter()
    objective = result.objective
    assert objective is not None, "the OLS fit keeps its objective for the refit"
    gls = FrameNoiseObjective(objective)
    passes = objective.passes
    theta = result.theta
    gammas = []
    lm = None
    iterations = 0
    history: list[dict] = []
    for round_index in range(GLS_ROUNDS):
        at_start = gls.estimate(theta)  # its pass also gives the fit's first normal equations
        gammas.append(gls.gamma)
        log.info("frame-shared noise: gamma = fs^2/s^2 = %.4g (round %d)", gammas[-1], round_index + 1)
        lm = levenberg_marquardt(
            gls, theta, problem.lower, problem.upper, problem.free, lm_options(options), initial=at_start, quiet=True
        )
        theta, iterations, history = lm.theta, iterations + lm.iterations, history + lm.history
    assert lm is not None
    hessian, gradient, cost, _ = gls.estimate(theta)
    gammas.append(gls.gamma)
    lm.hessian, lm.gradient, lm.chi2, lm.cost, lm.iterations = hessian, gradient, cost, cost, iterations
    seconds = time.perf_counter() - start
    refit = result_from_lm(lm, problem, result.n_ranks, objective, 0.0, seconds)
    refit.covariance = covariance_from_hessian(hessian, problem.free, 1.0)
    frame_noise = {
        "gamma": float(gammas[-1]),
        "gamma_rounds": [float(g) for g in gammas],
        "noise_variance": [float(v) for v in gls.variance],
        "iterations": int(iterations),
        "passes": int(objective.passes - passes),
        "ols": {"theta": [float(x) for x in result.theta], "std": [float(x) for x in result.std], "chi2": float(result.chi2)},
    }
    for name in REFITTED:
        setattr(result, name, getattr(refit, name))
    result.history = result.history + history
    result.timing_s["frame_noise"] = seconds
    result.frame_noise = frame_noise
    log.info(
        "frame-shared noise: GLS fit %s after %d iterations (gamma %.4g; %.2f s)",
        "converged" if lm.converged else "did not converge",
        iterations,
        gammas[-1],
        seconds,
    )
    return result
