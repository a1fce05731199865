"""NLSQ across ranks: scatter point blocks once, then one Allreduce per LM iteration.

Rank 0 builds the problem (starting values, bounds, noise weights) and the points; each
rank receives a contiguous, balanced block of points and keeps it for the whole fit.
``DistributedObjective`` turns a parameter vector into the global normal equations:
local chunk sums, one packed ``allreduce_sum``, assembly. The solver above it is the
same serial Levenberg-Marquardt on every rank.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ..data.points import PointSet
from ..errors import Interrupted
from ..model import ModelSpec, ParameterLayout
from ..parallel import Comm, SerialComm, balanced_counts
from ..parallel.signals import stop_requested
from .kernels import (
    KernelSetup,
    assemble_normal_equations,
    block_accumulators,
    block_frame_sensitivity,
    pack_accumulators,
    unpack_accumulators,
)
from .search import search_start, subsample_mask
from .solver import Evaluation, LMOptions, LMResult, levenberg_marquardt

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
    jackknife: object | None = None
    """``JackknifeResult`` when ``uncertainty: jackknife`` (else None)."""

    @property
    def degrees_of_freedom(self) -> int:
        """Points minus free parameters (at least 1)."""
        return max(self.n_points - self.n_free, 1)

    @property
    def reduced_chi2(self) -> float:
        """``chi2 / (n_points - n_free)``."""
        return self.chi2 / self.degrees_of_freedom

    @property
    def std(self) -> np.ndarray:
        """Standard deviation of each parameter from the model covariance."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    @property
    def std_jackknife(self) -> np.ndarray | None:
        """Frame-block jackknife standard deviation (None when not computed)."""
        return None if self.jackknife is None else self.jackknife.std


def point_counts(n_points: int, comm: Comm) -> np.ndarray:
    """Points per rank: contiguous balanced blocks."""
    return balanced_counts(n_points, comm.size)


def distribute_points(points: PointSet | None, n_points: int, comm: Comm, chunk_size: int | None = None) -> PointSet:
    """Scatter the root's points to every rank in balanced contiguous blocks.

    Each column travels as one ``Scatterv`` of its NumPy buffer. With ``chunk_size`` each
    rank's block arrives already padded to whole chunks (``padded_length``) with
    zero-weight points of its last angle, so that the fit's device block can use the same
    memory: a rank then holds its points once, plus per-chunk work space.
    """
    counts = point_counts(n_points, comm)
    mine = int(counts[comm.rank])
    capacity = None if chunk_size is None else padded_length(mine, chunk_size)
    columns = {}
    for name in PointSet.column_names():
        source = getattr(points, name) if comm.is_root else None
        columns[name] = comm.scatter_rows(source, counts, capacity=capacity)
    if capacity is not None and capacity > mine:
        fill_angle = int(columns["angle"][mine - 1]) if mine else 0
        for name, padding in PointSet.padding_columns(capacity - mine, fill_angle).items():
            columns[name][mine:] = padding
    return PointSet(**columns)


def padded_length(n_local: int, chunk_size: int) -> int:
    """Points of a block of ``n_local`` once padded to whole chunks of ``effective_chunk_size``."""
    chunk = effective_chunk_size(n_local, chunk_size)
    return max(1, -(-n_local // chunk)) * chunk


def effective_chunk_size(n_local: int, chunk_size: int) -> int:
    """Chunk length: ``chunk_size``, or the next power of two when a block is smaller."""
    if n_local >= chunk_size:
        return chunk_size
    return max(256, 1 << max(0, int(np.ceil(np.log2(max(n_local, 1))))))


def device_block(points: PointSet, chunk_size: int) -> tuple[jnp.ndarray, ...]:
    """The points as device arrays of shape ``(n_chunks, chunk_size)``, zero-weight padded.

    Padding repeats the last angle so that every chunk stays angle-sorted. A block that
    is already whole chunks is not copied: on the CPU the device arrays share its memory
    when it is 64-byte aligned, as ``distribute_points`` leaves it.
    """
    n_chunks = max(1, -(-len(points) // chunk_size))
    padded = points.padded(n_chunks * chunk_size, fill_angle=int(points.angle[-1]) if len(points) else 0)
    return tuple(
        jax.device_put(getattr(padded, name).reshape(n_chunks, chunk_size)) for name in PointSet.column_names()
    )


NO_EXCLUSION = np.array([-1, -1], dtype=np.int32)
"""``excluded_frames`` value that keeps every point."""


class DistributedObjective:
    """``theta -> (J^T W J, J^T W r, chi2, cost)`` summed over every rank's points.

    Setting ``excluded_frames = [start, stop)`` leaves out the points that touch those
    frames (a jackknife replicate) without recompiling.
    """

    def __init__(self, problem: NLSQProblem, local_points: PointSet, comm: Comm, *, chunk_size: int, loss: str, loss_scale: float):
        self.comm = comm
        self.problem = problem
        self.setup = KernelSetup(problem.spec, problem.layout, loss, float(loss_scale))
        self.chunk_size = effective_chunk_size(len(local_points), chunk_size)
        self.block = device_block(local_points, self.chunk_size)
        self.phi = jnp.asarray(problem.phi, dtype=jnp.float64)
        self.pair_of_angle = jnp.asarray(np.maximum(problem.layout.scaling_pair_of_angle(), 0))
        self.excluded_frames = NO_EXCLUSION
        self.evaluations = 0
        self.compute_seconds = 0.0
        self.reduce_seconds = 0.0
        self._compiled = None

    def compile(self, theta: np.ndarray) -> float:
        """Compile the block kernel ahead of time; returns the seconds it took."""
        start = time.perf_counter()
        self._compiled = block_accumulators.lower(
            jnp.asarray(theta), self.phi, self.pair_of_angle, self.block, jnp.asarray(self.excluded_frames), setup=self.setup
        ).compile()
        return time.perf_counter() - start

    def local_terms(self, theta: np.ndarray):
        """This rank's accumulator terms (NumPy) at ``theta``."""
        if self._compiled is None:
            self.compile(theta)
        terms = self._compiled(
            jnp.asarray(theta, dtype=jnp.float64),
            self.phi,
            self.pair_of_angle,
            self.block,
            jnp.asarray(self.excluded_frames, dtype=jnp.int32),
        )
        return jax.block_until_ready(terms)

    def gathered(self) -> "DistributedObjective":
        """The same objective over every rank's points, on this rank alone (collective).

        Each rank then holds all the points (padding included: its weight is zero), so
        it can run whole fits without talking to the others.
        """
        columns = [self.comm.allgather_rows(np.asarray(column).ravel()) for column in self.block]
        points = PointSet(*columns)
        return DistributedObjective(
            self.problem, points, SerialComm(), chunk_size=self.chunk_size, loss=self.setup.loss, loss_scale=self.setup.loss_scale
        )

    def frame_sensitivity(self, theta: np.ndarray) -> np.ndarray:
        """``(N, P)`` per-frame sums of the weighted Jacobian over every rank's points.

        See ``kernels.chunk_frame_sensitivity``; one Allreduce of ``N*P`` numbers.
        """
        local = block_frame_sensitivity(
            jnp.asarray(theta, dtype=jnp.float64), self.phi, self.pair_of_angle, self.block, setup=self.setup
        )
        local = np.ascontiguousarray(np.asarray(local, dtype=np.float64))
        return self.comm.allreduce_sum(local.ravel()).reshape(local.shape)

    def __call__(self, theta: np.ndarray) -> Evaluation:
        """The global normal equations at ``theta``.

        The buffer carries one extra number, this rank's stop flag (SIGTERM/SIGUSR1), so
        every rank learns of a signal on any rank in the same Allreduce and all raise
        ``Interrupted`` together.
        """
        start = time.perf_counter()
        packed = np.append(pack_accumulators(self.local_terms(theta)), 1.0 if stop_requested() else 0.0)
        middle = time.perf_counter()
        total = self.comm.allreduce_sum(packed)
        self.reduce_seconds += time.perf_counter() - middle
        self.compute_seconds += middle - start
        self.evaluations += 1
        if total[-1] > 0:
            interrupted = Interrupted("stopped by a signal during the NLSQ fit; finished work was saved")
            interrupted.collective = True
            raise interrupted
        terms = unpack_accumulators(total[:-1], self.setup)
        hessian, gradient = assemble_normal_equations(terms, self.setup)
        return hessian, gradient, terms[2], terms[3]


def covariance_from_hessian(hessian: np.ndarray, free: np.ndarray, reduced_chi2: float) -> np.ndarray:
    """``(J^T J)^-1 * reduced_chi2`` over the free parameters, zero-padded to full size."""
    from .jackknife import scaled_inverse

    free = np.asarray(free, dtype=bool)
    inverse = scaled_inverse(hessian[np.ix_(free, free)])
    covariance = np.zeros_like(hessian)
    covariance[np.ix_(free, free)] = inverse * reduced_chi2
    return covariance


def fit_nlsq(
    problem: NLSQProblem,
    local_points: PointSet,
    comm: Comm,
    options,
    *,
    theta0: np.ndarray | None = None,
    on_accept=None,
    resume=None,
) -> NLSQResult:
    """Fit the problem with every rank holding its own points; same result on all ranks.

    ``options`` is the config's ``optimization.nlsq`` section (``max_iterations``,
    ``xtol``, ``gtol``, ``ftol``, ``loss``, ``loss_scale``, ``chunk_size``,
    ``start_search``, ``search_points``). A given ``theta0`` (a resumed state) skips the
    start search; ``on_accept(theta, iteration, damping)`` sees every accepted step.
    ``resume`` (a ``LatestState`` from a checkpoint) continues an interrupted fit on the
    same path: its parameters, damping and iteration count.
    """
    objective = DistributedObjective(
        problem, local_points, comm, chunk_size=options.chunk_size, loss=options.loss, loss_scale=options.loss_scale
    )
    if resume is not None:
        theta0 = resume.theta
    start_theta = problem.theta0 if theta0 is None else np.asarray(theta0, dtype=float)
    compile_seconds = objective.compile(start_theta)
    search_seconds = 0.0
    if getattr(options, "start_search", False) and theta0 is None:
        search_start_time = time.perf_counter()
        start_theta = searched_start(problem, local_points, comm, options)
        search_seconds = time.perf_counter() - search_start_time
    fit_start = time.perf_counter()
    lm = levenberg_marquardt(
        objective,
        start_theta,
        problem.lower,
        problem.upper,
        problem.free,
        LMOptions(
            max_iterations=options.max_iterations,
            xtol=options.xtol,
            gtol=options.gtol,
            ftol=options.ftol,
            initial_damping=resume.damping if resume is not None else LMOptions.initial_damping,
        ),
        on_accept=on_accept,
        first_iteration=resume.iteration + 1 if resume is not None else 1,
    )
    fit_seconds = time.perf_counter() - fit_start
    result = result_from_lm(lm, problem, comm.size, objective, compile_seconds, fit_seconds)
    result.timing_s["start_search"] = search_seconds
    if getattr(options, "uncertainty", "model") == "jackknife":
        from .jackknife import run_jackknife

        result.jackknife = run_jackknife(objective, problem, lm.theta, result.covariance, result.reduced_chi2, options)
        result.timing_s["jackknife"] = result.jackknife.seconds
    result.memory = memory_report(comm, local_points, objective.chunk_size)
    return result


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, bytes (Linux ``ru_maxrss`` is KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def memory_report(comm: Comm, local_points: PointSet, chunk_size: int) -> dict:
    """Per-rank peak memory next to the size of each rank's points (gathered on root)."""
    mine = (peak_rss_bytes(), local_points.nbytes)
    everyone = comm.gather(mine)
    if not comm.is_root:
        return {}
    return {
        "chunk_size": int(chunk_size),
        "peak_rss_bytes_per_rank": [int(rss) for rss, _ in everyone],
        "local_points_bytes_per_rank": [int(size) for _, size in everyone],
    }


def local_offset(n_points: int, comm: Comm) -> int:
    """Global index of this rank's first point."""
    return int(point_counts(n_points, comm)[: comm.rank].sum())


def searched_start(problem: NLSQProblem, local_points: PointSet, comm: Comm, options) -> np.ndarray:
    """Starting point from the coarse grid search on a rank-independent subsample."""
    stride = max(1, problem.n_points // int(options.search_points))
    mask = subsample_mask(len(local_points), local_offset(problem.n_points, comm), stride)
    subsample = local_points.take(mask)
    objective = DistributedObjective(
        problem, subsample, comm, chunk_size=options.chunk_size, loss=options.loss, loss_scale=options.loss_scale
    )
    return search_start(objective, problem.theta0, problem.lower, problem.upper, problem.free, problem.layout)


def result_from_lm(lm: LMResult, problem: NLSQProblem, n_ranks: int, objective: DistributedObjective, compile_seconds: float, fit_seconds: float) -> NLSQResult:
    """Package the solver's outcome with the model covariance."""
    n_free = int(np.count_nonzero(problem.free))
    result = NLSQResult(
        names=problem.names,
        theta=lm.theta,
        covariance=np.zeros((len(lm.theta), len(lm.theta))),
        converged=lm.converged,
        reason=lm.reason,
        iterations=lm.iterations,
        chi2=lm.chi2,
        n_points=problem.n_points,
        n_free=n_free,
        n_ranks=n_ranks,
        history=lm.history,
        timing_s={
            "compile": compile_seconds,
            "fit": fit_seconds,
            "accumulate": objective.compute_seconds,
            "allreduce": objective.reduce_seconds,
        },
        hessian=lm.hessian,
    )
    result.covariance = covariance_from_hessian(lm.hessian, problem.free, result.reduced_chi2)
    return result
