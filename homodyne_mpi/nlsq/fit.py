"""NLSQ across ranks: scatter whole chunks of points once, then one ordered reduction per LM iteration.

Rank 0 builds the problem and the points; each rank keeps a contiguous, balanced run of
whole global chunks (``parallel.chunk_order.chunk_layout``). ``DistributedObjective``
turns a parameter vector into the global normal equations: one packed row of sums per
chunk, added on a fixed tree over chunk indices (``Comm.sum_in_chunk_order``), so the fit
has the same bits on any number of ranks. The serial Levenberg-Marquardt runs on every rank.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from ..data.points import PointSet
from ..errors import Interrupted, collective
from ..model import ModelSpec, ParameterLayout
from ..parallel import Comm, SerialComm
from ..parallel.chunk_order import ChunkLayout, chunk_layout
from ..parallel.signals import stop_requested
from .checkpoint import LatestState
from .frame_rows import check_row_memory
from .kernels import (
    KernelSetup,
    assemble_normal_equations,
    chunk_frame_sensitivities,
    chunk_pair_span,
    chunk_terms,
    unpack_accumulators,
)
from .linalg import covariance_from_hessian
from .search import search_start, subsample_indices
from .solver import Evaluation, LMOptions, LMResult, levenberg_marquardt

if TYPE_CHECKING:
    from .jackknife import JackknifeResult  # jackknife imports this module

log = logging.getLogger(__name__)


@dataclass
class NLSQProblem:
    """Everything every rank needs to fit, apart from the points (small; broadcast)."""

    spec: ModelSpec
    layout: ParameterLayout
    phi: np.ndarray
    """Scattering angles, degrees."""
    theta0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    free: np.ndarray
    """Mask of the fitted parameters; the others stay at ``theta0``."""
    n_points: int
    noise_sigma: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per-angle noise estimate used for the weights, c2 units."""

    @property
    def names(self) -> list[str]:
        """Parameter names in vector order."""
        return self.layout.names


@dataclass
class NLSQResult:
    """Fitted parameters with their uncertainty and how the fit went."""

    names: list[str]
    theta: np.ndarray
    covariance: np.ndarray
    """Covariance of all parameters (zeros in rows/columns of fixed ones)."""
    converged: bool
    reason: str
    iterations: int
    chi2: float
    n_points: int
    n_free: int
    n_ranks: int
    history: list[dict]
    timing_s: dict[str, float] = field(default_factory=dict)
    hessian: np.ndarray | None = None
    memory: dict = field(default_factory=dict)
    """Peak memory and point-block size per rank (root only)."""
    jackknife: JackknifeResult | None = None
    """The jackknife's result when ``uncertainty: jackknife`` (else None)."""
    at_bound: list[str | None] = field(default_factory=list)
    """Per parameter ``"lower"``, ``"upper"`` or None: a free parameter on its bound."""
    projected_gradient: float = float("nan")
    """Largest gradient cosine over the free parameters not pinned at a bound."""
    objective: DistributedObjective | None = None
    """The ``DistributedObjective`` of the fit, for the jackknife (dropped after it)."""
    profile: dict = field(default_factory=dict)
    """Per free physical parameter, both sides of its chi2 profile (``nlsq.profile``), when checked."""
    frame_noise: dict | None = None
    """With ``noise_model: frame_shared``: ``gamma``, per-angle variances, the OLS start (``nlsq.gls``)."""

    @property
    def reduced_chi2(self) -> float:
        """``chi2 / (n_points - n_free)`` (the degrees of freedom at least 1)."""
        return self.chi2 / max(self.n_points - self.n_free, 1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation of each parameter from the model covariance."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    @property
    def std_jackknife(self) -> np.ndarray | None:
        """Frame-block jackknife standard deviation (None when not computed)."""
        return None if self.jackknife is None else self.jackknife.std


def distribute_points(points: PointSet | None, n_points: int, comm: Comm, chunk_size: int) -> PointSet:
    """Scatter the root's points as whole chunks of ``chunk_layout(n_points, chunk_size, comm.size)``,
    one ``Scatterv`` per column; the last chunk arrives padded with zero-weight points of its last angle."""
    layout = chunk_layout(n_points, chunk_size, comm.size)
    counts = layout.point_counts()
    mine = int(counts[comm.rank])
    capacity = layout.capacity_of(comm.rank)
    columns = {}
    for name in PointSet.column_names():
        source = getattr(points, name) if comm.is_root else None
        columns[name] = comm.scatter_rows(source, counts, capacity=capacity)
    if capacity > mine:
        fill_angle = int(columns["angle"][mine - 1]) if mine else 0
        for name, padding in PointSet.padding_columns(capacity - mine, fill_angle).items():
            columns[name][mine:] = padding
    return PointSet(**columns)


def device_block(points: PointSet, chunk: int, n_chunks: int | None = None) -> tuple[jnp.ndarray, ...]:
    """The points as device arrays ``(n_chunks, chunk)``, padded with zero weight and the last angle;
    whole chunks are not copied (on the CPU they share 64-byte aligned memory)."""
    n_chunks = -(-len(points) // chunk) if n_chunks is None else n_chunks
    padded = points.padded(n_chunks * chunk, fill_angle=int(points.angle[-1]) if len(points) else 0)
    return tuple(jax.device_put(getattr(padded, name).reshape(n_chunks, chunk)) for name in PointSet.column_names())


def chunk_edge_angles(points: PointSet, chunk: int, n_chunks: int) -> np.ndarray:
    """``(n_chunks, 2)`` first and last angle index of each chunk of ``device_block(points,
    chunk, n_chunks)`` (padding repeats the last angle), read from the host columns."""
    n = len(points)
    if n == 0:
        return np.zeros((n_chunks, 2), dtype=np.int64)
    starts = np.arange(n_chunks) * chunk
    inside = starts < n
    first = np.where(inside, points.angle[np.minimum(starts, n - 1)], points.angle[-1])
    last = np.where(inside, points.angle[np.minimum(starts + chunk, n) - 1], points.angle[-1])
    return np.stack([first, last], axis=1)


NO_EXCLUSION = np.array([-1, -1], dtype=np.int32)
"""``excluded_frames`` value that keeps every point."""


class DistributedObjective:
    """``theta -> (J^T W J, J^T W r, chi2, cost)`` summed over every rank's chunks of ``n_points``
    (default ``problem.n_points``); ``excluded_frames = [start, stop)`` leaves out the points
    touching those frames (a jackknife replicate) without recompiling."""

    def __init__(
        self,
        problem: NLSQProblem,
        local_points: PointSet,
        comm: Comm,
        *,
        chunk_size: int,
        loss: str,
        loss_scale: float,
        n_points: int | None = None,
    ):
        self.comm = comm
        self.problem = problem
        self.layout: ChunkLayout = chunk_layout(problem.n_points if n_points is None else n_points, chunk_size, comm.size)
        self.chunk_size = self.layout.chunk
        self.first_chunk, stop = self.layout.chunks_of(comm.rank)
        self.block = device_block(local_points, self.chunk_size, stop - self.first_chunk)
        self.phi = jnp.asarray(problem.phi, dtype=jnp.float64)
        pair_of_angle = np.maximum(problem.layout.scaling_pair_of_angle(), 0)
        self.pair_of_angle = jnp.asarray(pair_of_angle)
        # the chunks are global (the same on any rank count), so is the largest span
        edges = chunk_edge_angles(local_points, self.chunk_size, stop - self.first_chunk)
        span = max(comm.allgather_rows(np.array([chunk_pair_span(edges, pair_of_angle)])))
        self.setup = KernelSetup(problem.spec, problem.layout, loss, float(loss_scale), pair_span=int(span))
        self.excluded_frames = NO_EXCLUSION
        self.passes = 0
        """Full passes over the data so far (every rank's chunks once: one kernel call and one reduction)."""
        self.compute_seconds = 0.0
        self.reduce_seconds = 0.0
        self._compiled: jax.stages.Compiled | None = None
        self._compiled_mixed: jax.stages.Compiled | None = None

    def arguments(self, theta: np.ndarray) -> tuple:
        """The block kernel's arguments at ``theta``, with the current ``excluded_frames``."""
        exclusion = jnp.asarray(self.excluded_frames, dtype=jnp.int32)
        return jnp.asarray(theta, dtype=jnp.float64), self.phi, self.pair_of_angle, self.block, exclusion

    def compile(self, theta: np.ndarray) -> float:
        """Compile the normal-equation block kernel ahead of time; returns the seconds
        (the mixed-gradient kernel is compiled on first use: many fits never need it)."""
        start = time.perf_counter()
        self._compiled = chunk_terms.lower(*self.arguments(theta), setup=self.setup).compile()
        return time.perf_counter() - start

    def local_terms(self, theta: np.ndarray, theta_model: np.ndarray | None = None) -> np.ndarray:
        """``(n_local_chunks, L)`` packed accumulator rows of this rank's chunks at ``theta``
        (residuals at ``theta_model`` when given: ``chunk_terms``)."""
        if self._compiled is None:
            self.compile(theta)
        assert self._compiled is not None, "compile() sets the block kernel"
        if theta_model is None:
            rows = self._compiled(*self.arguments(theta))
        else:
            model = jnp.asarray(theta_model, dtype=jnp.float64)
            if self._compiled_mixed is None:
                self._compiled_mixed = chunk_terms.lower(*self.arguments(theta), model, setup=self.setup).compile()
            rows = self._compiled_mixed(*self.arguments(theta), model)
        return np.asarray(jax.block_until_ready(rows), dtype=np.float64)

    def mixed_gradient(self, theta: np.ndarray, theta_model: np.ndarray) -> np.ndarray:
        """``J(theta)^T W r(theta_model)`` over every rank's points (for geodesic acceleration)."""
        start = time.perf_counter()
        total = self.reduce(self.local_terms(theta, theta_model), start)
        return assemble_normal_equations(unpack_accumulators(total, self.setup), self.setup)[1]

    def gathered(self) -> DistributedObjective:
        """The same objective over every rank's points (all chunks in global order, padding
        included), on this rank alone (collective): whole fits without messages, same bits."""
        columns = [self.comm.allgather_rows(np.asarray(column).ravel()) for column in self.block]
        return DistributedObjective(
            self.problem,
            PointSet(*columns),
            SerialComm(),
            chunk_size=self.chunk_size,
            loss=self.setup.loss,
            loss_scale=self.setup.loss_scale,
            n_points=self.layout.n_points,
        )

    def frame_sensitivity(self, theta: np.ndarray) -> np.ndarray:
        """``(N, P)`` per-frame sums of the weighted Jacobian over every rank's points
        (``kernels.chunk_frame_sensitivity``, added in chunk order)."""
        start = time.perf_counter()
        rows = chunk_frame_sensitivities(
            jnp.asarray(theta, dtype=jnp.float64), self.phi, self.pair_of_angle, self.block, setup=self.setup
        )
        total = self.reduce(np.asarray(rows), start)
        return total.reshape(self.problem.spec.n_frames, -1)

    def reduce(self, rows: np.ndarray, started: float) -> np.ndarray:
        """Sum of every rank's ``(n_local_chunks, L)`` ``rows`` in chunk order (one counted pass, compute
        timed from ``started``), with the stop flags: all ranks raise ``Interrupted`` together."""
        middle = time.perf_counter()
        total, stops = self.comm.sum_in_chunk_order(
            np.asarray(rows, dtype=np.float64), self.first_chunk, self.layout.n_chunks, 1.0 if stop_requested() else 0.0
        )
        self.compute_seconds += middle - started
        self.reduce_seconds += time.perf_counter() - middle
        self.passes += 1
        if stops > 0:
            raise collective(Interrupted("stopped by a signal during the NLSQ fit; finished work was saved"))
        return total

    def __call__(self, theta: np.ndarray) -> Evaluation:
        """The global normal equations at ``theta`` (one pass; ``reduce`` checks the stop flags)."""
        start = time.perf_counter()
        terms = unpack_accumulators(self.reduce(self.local_terms(theta), start), self.setup)
        hessian, gradient = assemble_normal_equations(terms, self.setup)
        return hessian, gradient, terms[2], terms[3]


def make_objective(
    problem: NLSQProblem, local_points: PointSet, comm: Comm, options, n_points: int | None = None
) -> DistributedObjective:
    """The objective of ``options`` (the config's ``optimization.nlsq``) over these points."""
    loss, loss_scale = options.loss, options.loss_scale
    return DistributedObjective(
        problem, local_points, comm, chunk_size=options.chunk_size, loss=loss, loss_scale=loss_scale, n_points=n_points
    )


def fit_nlsq(
    problem: NLSQProblem, local_points: PointSet, comm: Comm, options, *, on_accept=None, resume: LatestState | None = None
) -> NLSQResult:
    """Fit with every rank holding its own chunks (same bits on all ranks); ``options``: ``optimization.nlsq``.

    ``on_accept(theta, iteration, damping, growth, trusted)`` sees the LM state after every step;
    ``resume`` (a checkpoint's ``LatestState``) continues on the same path, without the start
    search; ``result.objective`` is kept for the jackknife.
    """
    objective = make_objective(problem, local_points, comm, options)
    if options.noise_model == "frame_shared":
        check_row_memory(objective)  # before the fit: nothing computed is lost
    start_theta = problem.theta0 if resume is None else np.asarray(resume.theta, dtype=float)
    compile_seconds = objective.compile(start_theta)
    search_seconds = 0.0
    state = resume or LatestState()
    if options.start_search and resume is None:
        search_start_time = time.perf_counter()
        start_theta = searched_start(problem, local_points, comm, options)
        search_seconds = time.perf_counter() - search_start_time
        state = LatestState(damping=SEARCHED_START_DAMPING)
    fit_start = time.perf_counter()
    lm = levenberg_marquardt(
        objective,
        start_theta,
        problem.lower,
        problem.upper,
        problem.free,
        lm_options(options, initial_damping=state.damping, initial_growth=state.growth, initial_trusted=state.trusted),
        on_accept=on_accept,
        first_iteration=state.iteration + 1,
        mixed_gradient=objective.mixed_gradient,
    )
    fit_seconds = time.perf_counter() - fit_start
    result = result_from_lm(lm, problem, comm.size, objective, compile_seconds, fit_seconds)
    result.timing_s["start_search"] = search_seconds
    result.memory = memory_report(comm, local_points, objective.chunk_size)
    result.objective = objective
    return result


def lm_options(
    options,
    *,
    max_iterations: int | None = None,
    initial_damping: float = LMOptions.initial_damping,
    initial_growth: float = LMOptions.initial_growth,
    initial_trusted: bool = LMOptions.initial_trusted,
    decrement_tol: float = 0.0,
    finish_step: bool = False,
    finish_decrement_tol: float = 0.0,
    finish_contraction: float = LMOptions.finish_contraction,
    finish_drift_tol: float = 0.0,
) -> LMOptions:
    """The solver's options from the config's ``optimization.nlsq`` section."""
    return LMOptions(
        max_iterations=int(options.max_iterations if max_iterations is None else max_iterations),
        xtol=options.xtol,
        gtol=options.gtol,
        ftol=options.ftol,
        initial_damping=initial_damping,
        initial_growth=initial_growth,
        initial_trusted=initial_trusted,
        decrement_tol=decrement_tol,
        finish_step=finish_step,
        finish_decrement_tol=finish_decrement_tol,
        finish_contraction=finish_contraction,
        finish_drift_tol=finish_drift_tol,
    )


def parameters_at_bound(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, free: np.ndarray) -> list[str | None]:
    """``"lower"``, ``"upper"`` or None per parameter: free ones within 1e-12 of the range of a bound."""
    margin = 1e-12 * np.maximum(upper - lower, 1e-300)
    near_lower, near_upper = free & (theta <= lower + margin), free & (theta >= upper - margin)
    return ["lower" if low else "upper" if high else None for low, high in zip(near_lower, near_upper)]


def memory_report(comm: Comm, local_points: PointSet, chunk_size: int) -> dict:
    """Per-rank peak memory next to the size of each rank's points, bytes (gathered on root)."""
    mine = (int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, local_points.nbytes)  # Linux ru_maxrss: KiB
    everyone = comm.gather(mine)
    if not comm.is_root:
        return {}
    assert everyone is not None, "Comm.gather returns the gathered list on the root"
    return {
        "chunk_size": int(chunk_size),
        "peak_rss_bytes_per_rank": [int(rss) for rss, _ in everyone],
        "local_points_bytes_per_rank": [int(size) for _, size in everyone],
    }


SEARCHED_START_DAMPING = 1e-6
"""Initial LM damping of a fit that starts from the search's refined point (the optimum of a
subsample, near the full data's): Gauss-Newton steps cross the degenerate valleys at once, where
the default 1e-3 shortens them along the valley for several iterations (docs/nlsq.md)."""


def searched_start(problem: NLSQProblem, local_points: PointSet, comm: Comm, options) -> np.ndarray:
    """Starting point from the coarse grid search on every ``stride``-th point by global index,
    gathered on every rank and cut into its own chunk layout (rank-independent sums)."""
    stride = max(1, problem.n_points // int(options.search_points))
    layout = chunk_layout(problem.n_points, options.chunk_size, comm.size)
    first, stop = layout.points_of(comm.rank)
    mine = local_points.take(subsample_indices(stop - first, first, stride))
    everyone = PointSet(*(comm.allgather_rows(getattr(mine, name)) for name in PointSet.column_names()))
    sub_layout = chunk_layout(len(everyone), options.chunk_size, comm.size)
    sub_first, sub_stop = sub_layout.points_of(comm.rank)
    objective = make_objective(problem, everyone.take(slice(sub_first, sub_stop)), comm, options, n_points=len(everyone))
    return search_start(objective, problem.theta0, problem.lower, problem.upper, problem.free, problem.layout)


def result_from_lm(
    lm: LMResult, problem: NLSQProblem, n_ranks: int, objective: DistributedObjective, compile_seconds: float, fit_seconds: float
) -> NLSQResult:
    """Package the solver's outcome with the model covariance and the bound flags."""
    timing = dict(compile=compile_seconds, fit=fit_seconds, accumulate=objective.compute_seconds, reduce=objective.reduce_seconds)
    result = NLSQResult(
        names=problem.names,
        theta=lm.theta,
        covariance=np.zeros((len(lm.theta), len(lm.theta))),
        converged=lm.converged,
        reason=lm.reason,
        iterations=lm.iterations,
        chi2=lm.chi2,
        n_points=problem.n_points,
        n_free=int(np.count_nonzero(problem.free)),
        n_ranks=n_ranks,
        history=lm.history,
        timing_s=timing,
        hessian=lm.hessian,
        at_bound=parameters_at_bound(lm.theta, problem.lower, problem.upper, problem.free),
        projected_gradient=lm.projected_gradient,
    )
    result.covariance = covariance_from_hessian(lm.hessian, problem.free, result.reduced_chi2)
    if not lm.converged and lm.reason.startswith("reached max_iterations"):
        result.reason += crawl_note(lm.history, result.reduced_chi2)
    return result


CRAWL_STEPS = 10
"""Accepted steps over which an unconverged fit's last decrease of chi2 is reported."""


def crawl_note(history: list[dict], reduced_chi2: float) -> str:
    """How much chi2 fell over the last ``CRAWL_STEPS`` accepted steps of a fit that ran out of
    iterations, in chi2 and in reduced-chi2 units; below one unit the fit was crawling along a flat
    valley (each step changes the answer by less than its statistical error), which is said."""
    accepted = [step["chi2"] for step in history if step["accepted"]]
    if len(accepted) < 2:
        return ""
    window = accepted[-(CRAWL_STEPS + 1) :]
    drop = window[0] - window[-1]
    units = drop / max(reduced_chi2, 1e-300)
    note = f"; chi2 fell by {drop:.3g} ({units:.3g} reduced-chi2 units) over its last {len(window) - 1} steps"
    if units < 1.0:
        note += (
            ": a slow crawl along a flat valley, where the data barely constrain the parameters that move"
            " (see the degeneracy warnings); raise optimization.nlsq.max_iterations to follow it to its end"
        )
    return note
