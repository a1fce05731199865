"""Frame-block jackknife: standard errors that respect the correlations of two-time data.

Every ``c2(t1, t2)`` shares frame ``t1`` with its row and ``t2`` with its column, so the
speckle noise is correlated along rows and columns and the model covariance
``C = (J^T J)^-1 chi2_red``, which treats the points as independent, is far too small.
The delete-a-block jackknife resamples whole frames, as for a U-statistic:

1. split the frames ``0..N-1`` into ``K`` contiguous blocks (``jackknife_blocks``) of
   equal influence (below; ``jackknife_blocking: equal`` gives equal frame counts);
2. for each block ``b``, drop every point whose ``t1`` or ``t2`` lies in it and refit from
   the full-data optimum, for at most ``jackknife_iterations`` steps;
3. ``cov_replicates = (K-1)/K * sum_b (theta_b - mean)(theta_b - mean)^T``.

This is consistent for frame-shared noise but over-counts independent noise: a point off
the block diagonal is left out by two replicates, and early frames carry more than their
share of ``D(t)`` at short times. Linearised at the optimum, a refit without block ``b``
moves by ``-H_b'^-1 J_b^T r_b``, whose covariance for independent noise is ``C_b - C``
(``C_b``: the model covariance with block ``b`` left out and the full fit's ``chi2_red``),
so the replicates hold ``cov_independent = (K-1)/K * sum_b (C_b - C)`` of it (2.05 ``C``
for 20 equal blocks, about 2.4 ``C`` for 20 influence blocks). The reported covariance is

    cov = C + psd(cov_replicates - cov_independent),

clipped in the parameters' own scale, separately for the scaling and the physical
parameters (``frame_corrected_covariance``), so it is never below the model error. With
independent noise it is the model error within the jackknife's scatter; with frame-shared
noise it is ``cov_replicates`` less about two ``C``.

Block sizes. The first and last frames move ``D0`` and ``alpha`` far more than the middle
ones; with equal frame counts one or two replicates carry most of the spread and a 2-std
interval misses far too often (static speckle data: 73% coverage). So blocks carry equal
shares of influence, frame ``f``'s share of ``sum_f a_f^2`` (``a_f = H^-1 s_f``: how far unit
noise on it moves the fit; ``frame_influence``), mixed half and half with the frame count.

One shared pass at the optimum gives every refit its first normal equations
(``left_out.first_systems``); refits start with a tiny damping (``REFIT_DAMPING``), or the
correlated ``D0``, ``alpha``, ``D_offset`` would crawl along their valley.

Stopping rule (``solver.LMOptions.finish_step``). After a step, a refit whose local quadratic
optimum is within ``REFIT_FINISH_DISTANCE`` (0.2) model std stops with a Newton finish: the
Gauss-Newton step of the system in hand, taken without a pass, so a refit that converges
in one step costs one pass. It does so only when the finish step is at most
``REFIT_CONTRACTION`` (0.25) times the step before it (Newton's steps converge there) and the
model variances are predicted to move by at most ``REFIT_DRIFT`` (1%) over it, because the
refit's ``C_b`` comes from the system in hand, at the point before the finish. Other refits
(crawling along a curved valley, or with fast-changing curvature) step on until their
optimum is within ``REFIT_DISTANCE`` (0.001) model std. Measured against refits run to 1e-6
std (scripts/study_refit_finish.py, docs/performance.md): 22 passes instead of 32 on the
static 1e6-point bench job, replicates within 3e-5 instead of 1e-3 model std there.

Distribution (``jackknife_parallel``): ``points`` (default) runs each replicate as a
distributed fit on all ranks; ``replicates`` gives every rank a copy of all points and
refits blocks ``rank, rank + size, ...`` alone (not faster on 2 cores; docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import Interrupted, collective
from .fit import NO_EXCLUSION, DistributedObjective, NLSQProblem, NLSQResult, fit_nlsq, lm_options
from .gls import refit_frame_shared
from .left_out import first_systems
from .linalg import covariance_from_hessian, psd_part_keeping_variances
from .profile import PROFILE_DECREMENT, PROFILE_ITERATIONS, profile_check
from .solver import LMOptions, levenberg_marquardt

log = logging.getLogger(__name__)


@dataclass
class JackknifeResult:
    """Replicate parameters and the covariance they give."""

    blocks: np.ndarray
    """``(K, 2)`` frame ranges ``[start, stop)`` that were left out."""
    replicates: np.ndarray
    """``(K, P)`` refitted parameters, one row per left-out block."""
    covariance_replicates: np.ndarray
    """``(P, P)`` ``(K-1)/K * sum (theta_b - mean)(theta_b - mean)^T`` of the replicates."""
    covariance_independent: np.ndarray
    """``(P, P)`` what independent noise alone would give ``covariance_replicates``."""
    covariance: np.ndarray
    """``(P, P)`` reported covariance: model part once plus the frame-shared excess."""
    converged: np.ndarray
    """``(K,)`` whether each refit met a tolerance within its iteration budget."""
    seconds: float
    parallel: str = "points"
    """How the refits used the ranks: ``replicates`` (by rank) or ``points`` (together)."""
    passes: int = 0
    """Full passes over the data the jackknife made (block choice, shared first pass, refits; all ranks' refits counted)."""

    @property
    def std(self) -> np.ndarray:
        """Jackknife standard deviation of each parameter."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    @property
    def kept(self) -> np.ndarray:
        """``(K', P)`` the replicates of the converged refits (the ones the covariance uses)."""
        return self.replicates[self.converged]

    @property
    def effective_dof(self) -> np.ndarray:
        """``(P,)`` degrees of freedom of each parameter's replicate variance (``replicate_dof``)."""
        return replicate_dof(self.kept) if len(self.kept) >= 2 else np.zeros(self.replicates.shape[1])


def replicate_dof(replicates: np.ndarray) -> np.ndarray:
    """``(P,)`` Satterthwaite degrees of freedom ``(sum_b d_b^2)^2 / sum_b d_b^4`` of the replicates'
    variance (``d_b``: deviation from the mean): ``K`` for equal blocks, 1 when one carries all; unmoved ``K - 1``."""
    replicates = np.asarray(replicates, dtype=float)
    squared = (replicates - replicates.mean(axis=0)) ** 2
    fourth = np.sum(squared**2, axis=0)
    total = np.sum(squared, axis=0)
    moved = fourth > 0
    dof = np.full(replicates.shape[1], float(replicates.shape[0] - 1))
    dof[moved] = total[moved] ** 2 / fourth[moved]
    return dof


def frame_ranges(edges) -> np.ndarray:
    """``(K, 2)`` ranges ``[start, stop)`` between consecutive block edges (int32)."""
    edges = np.asarray(edges, dtype=np.int32)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def frame_blocks(n_frames: int, n_blocks: int) -> np.ndarray:
    """``(K, 2)`` contiguous ``[start, stop)`` ranges covering the frames, sizes within 1."""
    n_blocks = int(min(max(n_blocks, 2), n_frames))
    return frame_ranges(np.linspace(0, n_frames, n_blocks + 1).round())


def influence_blocks(influence: np.ndarray, n_blocks: int) -> np.ndarray:
    """``(K, 2)`` contiguous frame ranges of about ``1/K`` of the ``(N,)`` influence each (boundary ``b``
    nearest the cumulative share ``b/K``, at least one frame per block; ``frame_blocks`` without any)."""
    n_frames = len(influence)
    n_blocks = int(min(max(n_blocks, 2), n_frames))
    total = float(np.sum(influence))
    if not np.isfinite(total) or total <= 0:
        return frame_blocks(n_frames, n_blocks)
    cumulative = np.concatenate([[0.0], np.cumsum(influence) / total])  # before each frame, and the end
    edges = [0]
    for b in range(1, n_blocks):
        target = b / n_blocks
        crossing = int(np.searchsorted(cumulative, target - 1e-12))  # 1e-12: rounding of the sums
        edge = crossing - 1 if target - cumulative[crossing - 1] < cumulative[crossing] - target else crossing
        edges.append(min(max(edge, edges[-1] + 1), n_frames - (n_blocks - b)))
    return frame_ranges([*edges, n_frames])


def frame_influence(sensitivity: np.ndarray, covariance_model: np.ndarray, free: np.ndarray, physical: slice) -> np.ndarray:
    """``(N,)`` each frame's share of ``sum_f a_f^2``, ``a_f = H^-1 s_f`` (``H^-1``: the model covariance;
    ``s_f``: the ``(N, P)`` ``sensitivity`` rows) over the free physical parameters; equal if none."""
    free = np.asarray(free, dtype=bool)
    physical_free = free.copy()
    physical_free[: physical.start] = physical_free[physical.stop :] = False
    squared = (sensitivity[:, free] @ covariance_model[np.ix_(free, physical_free)]) ** 2
    totals = squared.sum(axis=0)
    if not np.any(totals > 0):
        return np.full(sensitivity.shape[0], 1.0 / sensitivity.shape[0])
    return (squared[:, totals > 0] / totals[totals > 0]).mean(axis=1)


REFIT_DAMPING = 1e-9
"""Initial LM damping of the refits (near Gauss-Newton: they start at the optimum)."""
REFIT_DISTANCE = 0.001
"""A refit that does not finish (module docstring) has converged when its local quadratic optimum
is within this many model std (Mahalanobis distance ``sqrt(g^T H^-1 g / chi2_red)``), or on the
fit's tolerances. Before the Newton finish every refit stopped at 0.01 without a finish step."""
REFIT_FINISH_DISTANCE = 0.2
"""A refit stops with the Newton finish step once its local quadratic optimum is within this many
model std, if ``REFIT_CONTRACTION`` and ``REFIT_DRIFT`` allow (chosen by measurement: the smallest
that lets every refit of the static bench job finish after one step; 0.1 to 0.3 gave similar
accuracy; docs/performance.md)."""
REFIT_CONTRACTION = 0.25
"""Largest ratio of the finish step to the last step (metric ``H``) at which a refit finishes."""
REFIT_DRIFT = 0.01
"""Largest predicted relative change of the refit's model variances over the finish step."""
INFLUENCE_SHARE = 0.5
"""Weight of the frames' influence in the block sizes; the rest is spread evenly over frames."""


def independent_noise_covariance(
    covariance_model: np.ndarray, covariances_left_out: np.ndarray, n_blocks: int | None = None
) -> np.ndarray:
    """``(K-1)/K' sum_b (C_b - C)``: the replicates' covariance if all noise were independent, from the
    ``(K', P, P)`` model covariances of the kept refits (full fit's ``chi2_red``); ``n_blocks``: ``K``."""
    kept = len(covariances_left_out)
    n_blocks = kept if n_blocks is None else n_blocks
    return (n_blocks - 1) / kept * np.sum(covariances_left_out - covariance_model, axis=0)


def frame_corrected_covariance(
    covariance_replicates: np.ndarray,
    covariance_model: np.ndarray,
    covariance_independent: np.ndarray,
    groups: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``C + psd(cov_replicates - cov_independent)``, clipped in the parameters' scale.

    ``groups`` (index arrays; default: all) are clipped apart, the excess between them left out:
    clipping inflates what is left, the more dimensions the more, so the scaling parameters
    would widen ``D0`` or ``alpha`` without frame-shared noise (median 1.25 times the model
    error, against 1.08 to 1.11 when clipped apart; docs/uncertainty.md). Within a group
    ``psd_part_keeping_variances``; fixed parameters keep the replicates' (zero) values.
    """
    n_params = covariance_model.shape[0]
    groups = [np.arange(n_params)] if groups is None else [np.asarray(g, dtype=int) for g in groups]
    scale = np.sqrt(np.clip(np.diag(covariance_model), 0.0, None))
    corrected = covariance_replicates.copy()
    free = np.flatnonzero(scale > 0)
    corrected[np.ix_(free, free)] = covariance_model[np.ix_(free, free)]
    for group in groups:
        group = group[scale[group] > 0]
        index = np.ix_(group, group)
        outer = np.outer(scale[group], scale[group])
        excess = psd_part_keeping_variances((covariance_replicates[index] - covariance_independent[index]) / outer)
        corrected[index] = covariance_model[index] + excess * outer
    return corrected


def jackknife_covariance(replicates: np.ndarray, n_blocks: int | None = None) -> np.ndarray:
    """``(K-1)/K' * sum (theta_b - mean)(theta_b - mean)^T`` of ``(K', P)`` kept replicates (``n_blocks``:
    ``K``, default ``K'``; each deviation keeps a ``K``-block replicate's size)."""
    kept = replicates.shape[0]
    n_blocks = kept if n_blocks is None else n_blocks
    deviations = replicates - replicates.mean(axis=0)
    return (n_blocks - 1) / kept * deviations.T @ deviations


def choose_blocks(objective: DistributedObjective, problem: NLSQProblem, theta_hat, covariance_model, options) -> np.ndarray:
    """The ``(K, 2)`` frame blocks of the configured ``jackknife_blocking`` (collective)."""
    blocking = options.jackknife_blocking
    if blocking == "influence":
        sensitivity = objective.frame_sensitivity(theta_hat)
        influence = frame_influence(sensitivity, covariance_model, problem.free, problem.layout.physical_slice)
        influence = INFLUENCE_SHARE * influence + (1 - INFLUENCE_SHARE) / len(influence)
        blocks = influence_blocks(influence, options.jackknife_blocks)
    else:
        blocks = frame_blocks(problem.spec.n_frames, options.jackknife_blocks)
    sizes = blocks[:, 1] - blocks[:, 0]
    log.info("jackknife: %d blocks of %d to %d frames (%s)", len(blocks), sizes.min(), sizes.max(), blocking)
    return blocks


def refit_without(objective: DistributedObjective, block, theta_hat, lm_options: LMOptions, reduced_chi2: float, initial=None):
    """``(refit, C_b)`` without the points touching ``block``, from ``theta_hat`` (``initial``: its system there).

    Plain steps: a fraction of a std from the optimum, acceleration costs more than it saves (docs/nlsq.md).
    """
    problem = objective.problem
    objective.excluded_frames = np.asarray(block, dtype=np.int32)
    try:
        refit = levenberg_marquardt(
            objective, theta_hat, problem.lower, problem.upper, problem.free, lm_options, initial=initial, quiet=True
        )
    finally:
        objective.excluded_frames = NO_EXCLUSION
    return refit, covariance_from_hessian(refit.hessian, problem.free, reduced_chi2)


def log_refit(index: int, blocks: np.ndarray, refit) -> None:
    """Log one refit's outcome, with its left-out frames counted from 1."""
    first, stop = blocks[index]
    state = ("converged, finished with a Newton step" if refit.finished else "converged") if refit.converged else refit.reason
    message = "jackknife %d/%d (frames %d..%d left out): %d iterations, %s"
    log.info(message, index + 1, len(blocks), first + 1, stop, refit.iterations, state)


def refits_together(objective, blocks, theta_hat, lm_options, reduced_chi2, initial=None):
    """All ranks work on each refit in turn: ``(replicates, converged, C_b)`` stacked, and the passes."""
    rows = []
    passes = objective.passes
    for index, block in enumerate(blocks):
        first = None if initial is None else initial[index]
        refit, covariance_left_out = refit_without(objective, block, theta_hat, lm_options, reduced_chi2, first)
        log_refit(index, blocks, refit)
        rows.append((refit.theta, refit.converged, covariance_left_out))
    return *(np.asarray(column) for column in zip(*rows)), objective.passes - passes


def refits_by_rank(objective, blocks, theta_hat, lm_options, reduced_chi2, initial=None):
    """Each rank refits blocks ``rank, rank + size, ...`` on its own copy of all points, meeting once per
    round (a stop flag) and at the end (one summed table); same bits as ``refits_together``."""
    comm = objective.comm
    own = objective.gathered()
    n_blocks, n_params = len(blocks), len(theta_hat)
    table = np.zeros((n_blocks, n_params + 2 + n_params * n_params))
    stopped = False
    for round_start in range(0, n_blocks, comm.size):
        index = round_start + comm.rank
        if index < n_blocks and not stopped:
            first = None if initial is None else initial[index]
            passes = own.passes
            try:
                refit, covariance_left_out = refit_without(own, blocks[index], theta_hat, lm_options, reduced_chi2, first)
            except Interrupted:
                stopped = True
            else:
                log_refit(index, blocks, refit)
                flags = [float(refit.converged), float(own.passes - passes)]
                table[index] = np.concatenate([refit.theta, flags, covariance_left_out.ravel()])
        if comm.allreduce_sum(np.array([float(stopped)]))[0] > 0:
            raise collective(Interrupted("stopped by a signal during the jackknife refits"))
    table = comm.allreduce_sum(table)
    replicates, converged, passes = table[:, :n_params], table[:, n_params] > 0.5, int(table[:, n_params + 1].sum())
    return replicates, converged, table[:, n_params + 2 :].reshape(n_blocks, n_params, n_params), passes


def run_jackknife(
    result: NLSQResult,
    problem: NLSQProblem,
    options,
    *,
    shared_first_pass: bool = True,
    distance: float = REFIT_DISTANCE,
    finish: bool = True,
    finish_distance: float = REFIT_FINISH_DISTANCE,
    contraction: float = REFIT_CONTRACTION,
    drift: float = REFIT_DRIFT,
) -> JackknifeResult:
    """Refit the full fit ``result`` with each frame block left out and build the covariance (collective).

    Unconverged refits are logged and left out (the model covariance with fewer than two
    converged); ``shared_first_pass=False`` lets each refit make its own first pass (tests).
    The refits' stopping rule (module docstring): ``distance`` (``REFIT_DISTANCE``) and, with
    ``finish``, ``finish_distance``, ``contraction`` and ``drift``; ``finish=False`` with a small
    ``distance`` gives reference replicates (tests, studies).
    """
    start = time.perf_counter()
    objective = result.objective
    if objective is None:
        raise ValueError("run_jackknife needs the fit's objective (fit_nlsq keeps it; attach_uncertainty drops it)")
    passes = objective.passes
    theta_hat, covariance_model, reduced_chi2 = result.theta, result.covariance, result.reduced_chi2
    blocks = choose_blocks(objective, problem, theta_hat, covariance_model, options)
    initial = first_systems(objective, blocks, theta_hat) if shared_first_pass else None
    passes = objective.passes - passes
    decrement_tol = distance**2 * reduced_chi2
    refit_options = lm_options(
        options,
        max_iterations=options.jackknife_iterations,
        initial_damping=REFIT_DAMPING,
        decrement_tol=decrement_tol,
        finish_step=finish,
        finish_decrement_tol=finish_distance**2 * reduced_chi2,
        finish_contraction=contraction,
        finish_drift_tol=drift,
    )
    by_rank = objective.comm.size > 1 and options.jackknife_parallel == "replicates"
    how = f"by rank, each of {objective.comm.size} ranks on a copy of all points" if by_rank else "all ranks on each refit"
    log.info("jackknife refits: %s", how)
    run_refits = refits_by_rank if by_rank else refits_together
    replicates, converged, covariances_left_out, refit_passes = run_refits(
        objective, blocks, theta_hat, refit_options, reduced_chi2, initial
    )
    converged = np.asarray(converged, dtype=bool)
    kept = np.flatnonzero(converged)
    if len(kept) < len(blocks):
        named = ", ".join(f"{blocks[b][0] + 1}..{blocks[b][1]}" for b in np.flatnonzero(~converged))
        log.warning(
            "jackknife: %d of %d refits did not converge in %d iterations (frames %s left out); they are excluded "
            "from the covariance; raise optimization.nlsq.jackknife_iterations if this is many",
            len(blocks) - len(kept),
            len(blocks),
            options.jackknife_iterations,
            named,
        )
    if len(kept) >= 2:
        covariance_replicates = jackknife_covariance(replicates[kept], len(blocks))
        covariance_independent = independent_noise_covariance(covariance_model, covariances_left_out[kept], len(blocks))
        physical = problem.layout.physical_slice  # the scaling and the physical parameters are clipped apart
        groups = [np.arange(physical.start), np.arange(physical.start, physical.stop)]
        covariance = frame_corrected_covariance(covariance_replicates, covariance_model, covariance_independent, groups)
    else:
        log.warning("jackknife: fewer than 2 converged refits; the reported std is the model std")
        covariance_replicates = covariance_independent = np.zeros_like(covariance_model)
        covariance = covariance_model.copy()
    return JackknifeResult(
        blocks=blocks,
        replicates=replicates,
        covariance_replicates=covariance_replicates,
        covariance_independent=covariance_independent,
        covariance=covariance,
        converged=converged,
        seconds=time.perf_counter() - start,
        parallel="replicates" if by_rank else "points",
        passes=passes + refit_passes,
    )


def attach_uncertainty(result: NLSQResult, problem: NLSQProblem, options) -> NLSQResult:
    """After the fit: the jackknife when ``options.uncertainty == "jackknife"``, the profile
    check (``nlsq.profile``) when ``options.profile_check`` and the fit converged; then frees the objective.
    With ``noise_model: frame_shared`` the generalised least-squares fit (``nlsq.gls``) replaces the
    ordinary one instead, and its covariance is the reported error (no jackknife, no profile check)."""
    if options.noise_model == "frame_shared":
        log.info("frame-shared noise: the reported std is the GLS model std (no jackknife, no profile check)")
        refit_frame_shared(result, problem, options)
        result.objective = None
        return result
    if options.uncertainty == "jackknife":
        result.jackknife = run_jackknife(result, problem, options)
        result.timing_s["jackknife"] = result.jackknife.seconds
    if options.profile_check and result.converged:
        start = time.perf_counter()
        decrement = PROFILE_DECREMENT * result.reduced_chi2
        profile_options = lm_options(options, max_iterations=PROFILE_ITERATIONS, decrement_tol=decrement)
        result.profile = profile_check(result, problem, profile_options)
        result.timing_s["profile_check"] = time.perf_counter() - start
    result.objective = None
    return result


def fit_with_uncertainty(problem: NLSQProblem, local_points, comm, options) -> NLSQResult:
    """``fit_nlsq`` followed by ``attach_uncertainty``: what the pipeline does, for scripts and tests."""
    return attach_uncertainty(fit_nlsq(problem, local_points, comm, options), problem, options)
