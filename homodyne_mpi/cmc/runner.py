"""The distributed CMC driver: shards out from rank 0, NUTS on every rank, consensus on rank 0.

``run_cmc`` is called on every rank:

1. Rank 0 cuts the points into shards (``sharding``), builds the priors (``priors``),
   fixes the sampler settings, fingerprints every shard and reads back the finished
   shards of an earlier run (``checkpoint``); the plan (small) is broadcast. A bad input
   there is raised on every rank together.
2. The shards still to run go through the task farm of ``parallel.dispatch``: every rank
   (rank 0 in a worker thread) asks for the next shard as soon as it is free, runs NUTS
   on it (``sampler``) and sends the result back. Rank 0 checkpoints each result as it
   arrives and logs progress (done/total, time per shard, rate, ETA). A shard that raises
   is recorded with its rank, error and traceback; the others carry on.
3. Rank 0 filters the shards (failed, divergences, R-hat), combines the rest
   (``combination``) and returns the ``CMCResult``; too few good shards is a ``FitError``
   raised on every rank, naming the shards (and ``cmc/result.json`` records them).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import time
import traceback as traceback_module
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.points import PointSet
from ..errors import FitError, InputError, Interrupted
from ..io.atomic import atomic_write_json
from ..parallel.dispatch import FarmResult, FarmStats, Task, run_task_farm
from . import checkpoint
from .combination import combine
from .priors import PriorSpec, build_priors, noise_scale_of
from .sampler import (
    SamplerSettings,
    ShardResult,
    ShardSampler,
    chain_method_for,
    diagnostics,
)
from .shard_model import ShardData, ShardModel
from .sharding import adapted_counts, assign_shards, dispatch_order, shard_count

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.5, 0.95)


def _stop_requested() -> bool:
    """The process's stop flag (SIGTERM/SIGUSR1), if the signal module is there."""
    try:
        from ..parallel.signals import stop_requested
    except ImportError:  # pragma: no cover - older trees
        return False
    return bool(stop_requested())


@dataclass(frozen=True)
class RunPlan:
    """What every rank needs to run any shard (broadcast from rank 0)."""

    priors: PriorSpec
    settings: SamplerSettings
    n_shards: int
    n_points: int
    n_padded: int
    """Every shard is padded (zero weight) to this length so one compilation serves all."""
    fill_angle: int
    seed: int
    calibration: float
    fingerprint: str
    retry_settings: SamplerSettings | None
    """The settings of a shard's second attempt (higher ``target_accept_prob``), or None."""
    max_divergence_rate: float
    max_rhat: float
    """The shard checks (``combination``) that decide a retry and the combination."""


@dataclass
class CMCResult:
    """The combined posterior and the record of every shard (rank 0)."""

    names: list[str]
    """``problem.names`` then ``sigma``."""
    fixed: np.ndarray
    """True for parameters held fixed (constant draws)."""
    draws: np.ndarray
    """``(n_draws, n_params)`` combined draws."""
    shards: list[ShardResult]
    status: dict[int, str | None]
    """Per shard index: ``None`` when used, else why it was left out."""
    combination: dict
    plan: RunPlan
    n_ranks: int
    timing_s: dict = field(default_factory=dict)
    dispatch: dict = field(default_factory=dict)
    shard_means: np.ndarray | None = None
    """``(n_used, n_params)`` means of the shards that entered the combination."""
    shard_covariances: np.ndarray | None = None
    """``(n_used, n_params, n_params)``."""
    used: list[int] = field(default_factory=list)
    """Indices of the shards that entered."""
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return self.draws.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.draws.std(axis=0, ddof=1) if self.draws.shape[0] > 1 else np.zeros(self.draws.shape[1])

    @property
    def covariance(self) -> np.ndarray:
        return np.atleast_2d(np.cov(self.draws, rowvar=False))

    def parameters(self) -> dict:
        """``{name: {mean, std, q05, q50, q95, fixed}}``."""
        quantiles = np.quantile(self.draws, QUANTILES, axis=0)
        mean, std = self.mean, self.std
        return {
            name: {
                "mean": float(mean[k]),
                "std": float(std[k]),
                "q05": float(quantiles[0, k]),
                "q50": float(quantiles[1, k]),
                "q95": float(quantiles[2, k]),
                "fixed": bool(self.fixed[k]),
            }
            for k, name in enumerate(self.names)
        }

    def to_json_dict(self) -> dict:
        """The ``cmc/result.json`` mapping (DESIGN section 6)."""
        plan = self.plan
        return {
            "method": "cmc",
            "parameters": self.parameters(),
            "shards": [shard_record(s, self.status.get(s.index)) for s in self.shards],
            "combination": self.combination,
            "n_ranks": int(self.n_ranks),
            "n_points": int(plan.n_points),
            "n_shards": int(plan.n_shards),
            "n_draws": int(self.draws.shape[0]),
            "sampler": sampler_record(plan),
            "priors": plan.priors.to_dict(),
            "timing_s": {k: float(v) for k, v in self.timing_s.items()},
            "dispatch": self.dispatch,
            **self.extra,
        }

    def posterior_arrays(self) -> dict[str, np.ndarray]:
        """Datasets of ``cmc/posterior.h5``."""
        out = {
            "draws": self.draws,
            "names": np.asarray(self.names, dtype="S"),
            "mean": self.mean,
            "covariance": self.covariance,
            "fixed": self.fixed.astype(np.uint8),
            "shards/index": np.asarray(self.used, dtype=np.int64),
        }
        if self.shard_means is not None:
            out["shards/mean"] = self.shard_means
            out["shards/covariance"] = self.shard_covariances
        return out


def sampler_record(plan: RunPlan) -> dict:
    s = plan.settings
    return {
        "num_warmup": s.num_warmup,
        "num_samples": s.num_samples,
        "num_chains": s.num_chains,
        "chain_method": s.chain_method,
        "target_accept_prob": s.target_accept_prob,
        "retry_target_accept_prob": None if plan.retry_settings is None else plan.retry_settings.target_accept_prob,
        "max_tree_depth": s.max_tree_depth,
        "dense_mass": s.dense_mass,
        "shard_points_padded": plan.n_padded,
        "seed": plan.seed,
        "calibration": plan.calibration,
    }


def shard_record(result: ShardResult, excluded_reason: str | None) -> dict:
    """One entry of ``shards`` in ``cmc/result.json``."""
    return {
        "index": int(result.index),
        "n_points": int(result.n_points),
        "rank": int(result.rank),
        "host": result.host,
        "rhat_max": result.rhat_max,
        "ess_min": result.ess_min,
        "divergences": result.divergences,
        "divergence_rate": result.divergence_rate,
        "ok": excluded_reason is None,
        "error": result.error,
        "traceback": result.traceback,
        "seconds": float(result.seconds),
        "chain_method": result.chain_method,
        "target_accept_prob": float(result.target_accept_prob),
        "retried_because": result.retried_because,
        "reused": bool(result.reused),
        "excluded_reason": excluded_reason,
    }


# -- planning (rank 0) ------------------------------------------------------------------


@dataclass
class _RootState:
    shards: list[np.ndarray] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    reused: dict[int, ShardResult] = field(default_factory=dict)


def plan_run(cfg, problem, points: PointSet | None, warm_start, calibration: float, output_dir, state: _RootState) -> RunPlan:
    """Rank 0: shards, priors, sampler settings, fingerprints, reusable checkpoints."""
    cmc = cfg.optimization.cmc
    if points is None or len(points) == 0:
        raise InputError("CMC: no data points to sample -- check the frame window and angle selection")
    if not (calibration >= 1.0 and math.isfinite(calibration)):
        raise InputError(f"CMC: likelihood calibration must be >= 1, got {calibration}")
    n_points = len(points)
    n_sampled = int(np.count_nonzero(problem.free)) + 1
    n_shards = shard_count(
        n_points,
        n_sampled,
        num_shards=cmc.sharding.num_shards,
        max_points_per_shard=cmc.sharding.max_points_per_shard,
        min_points_per_parameter=cmc.sharding.min_points_per_parameter,
    )
    state.shards = assign_shards(points.angle, n_shards, strategy=cmc.sharding.strategy, seed=cmc.seed)
    sizes = [len(s) for s in state.shards]
    n_padded = max(sizes)
    priors = build_priors(
        cfg, problem, warm_start, n_shards=n_shards, noise_scale=noise_scale_of(points.weight), calibration=calibration
    )
    mcmc = cmc.per_shard_mcmc
    warmup, samples = adapted_counts(
        n_padded,
        num_warmup=mcmc.num_warmup,
        num_samples=mcmc.num_samples,
        min_warmup=mcmc.min_warmup,
        min_samples=mcmc.min_samples,
    )
    # Device counts are checked on each rank by ShardSampler; here only the shard size.
    method, reason = chain_method_for(mcmc.chain_method, mcmc.num_chains, n_padded, mcmc.num_chains)
    if reason is not None and mcmc.chain_method == "parallel":
        log.warning("CMC: chains run sequentially: %s", reason)
    settings = SamplerSettings(
        num_warmup=warmup,
        num_samples=samples,
        num_chains=mcmc.num_chains,
        chain_method=method,
        target_accept_prob=mcmc.target_accept_prob,
        max_tree_depth=mcmc.max_tree_depth,
    )
    retry_settings = None
    if mcmc.retry_target_accept_prob > mcmc.target_accept_prob:
        retry_settings = dataclasses.replace(settings, target_accept_prob=mcmc.retry_target_accept_prob)
    fill_angle = int(points.angle.max())
    run_fp = checkpoint.run_fingerprint(
        {
            "cmc": cmc,
            "priors": priors,
            "settings": settings,
            "n_padded": n_padded,
            "fill_angle": fill_angle,
            "spec": problem.spec,
            "layout": problem.layout,
            "phi": np.asarray(problem.phi, dtype=float),
            "calibration": float(calibration),
        }
    )
    state.fingerprints = [
        checkpoint.shard_fingerprint(run_fp, k, _columns(points, idx)) for k, idx in enumerate(state.shards)
    ]
    if output_dir is not None:
        for k, fp in enumerate(state.fingerprints):
            found = checkpoint.load_shard(output_dir, k, fp)
            if found is not None:
                state.reused[k] = found
        if state.reused:
            log.info("CMC: %d of %d shards reused from %s", len(state.reused), n_shards, checkpoint.shard_folder(output_dir))
    log.info(
        "CMC: %d points in %d shards of %d-%d points; %d warm-up + %d samples x %d chains (%s)",
        n_points,
        n_shards,
        min(sizes),
        n_padded,
        warmup,
        samples,
        mcmc.num_chains,
        method,
    )
    return RunPlan(
        priors=priors,
        settings=settings,
        n_shards=n_shards,
        n_points=n_points,
        n_padded=n_padded,
        fill_angle=fill_angle,
        seed=int(cmc.seed),
        calibration=float(calibration),
        fingerprint=run_fp,
        retry_settings=retry_settings,
        max_divergence_rate=float(cmc.combination.max_divergence_rate),
        max_rhat=float(cmc.combination.max_rhat),
    )


def _columns(points: PointSet, index: np.ndarray) -> dict[str, np.ndarray]:
    """A shard's points as two buffers: int32 ``(3, n)`` and float64 ``(2, n)``."""
    return {
        "ints": np.stack([points.angle[index], points.frame_i[index], points.frame_j[index]]).astype(np.int32),
        "floats": np.stack([points.value[index], points.weight[index]]).astype(np.float64),
    }


# -- one shard (every rank) -------------------------------------------------------------


class ShardWorker:
    """Runs shards on this rank; each sampler is built (and compiled) on first use."""

    def __init__(self, problem, plan: RunPlan, rank: int) -> None:
        self.problem = problem
        self.plan = plan
        self.rank = rank
        self.host = socket.gethostname()
        self._samplers: dict[float, ShardSampler] = {}

    def sampler_for(self, settings: SamplerSettings) -> ShardSampler:
        """The sampler of ``settings`` (the plan's, or its retry's)."""
        key = settings.target_accept_prob
        if key not in self._samplers:
            model = ShardModel(
                self.plan.priors,
                self.problem.spec,
                self.problem.layout,
                self.problem.phi,
                calibration=self.plan.calibration,
                n_points=self.plan.n_padded,
            )
            self._samplers[key] = ShardSampler(model, settings, seed=self.plan.seed)
        return self._samplers[key]

    def __call__(self, task: dict, arrays: dict) -> tuple[dict, dict]:
        result = run_shard(self, int(task["index"]), arrays)
        return result.meta(), result.arrays()


def shard_data(arrays: dict, n_padded: int, fill_angle: int) -> tuple[ShardData, int]:
    """The padded arrays of a shard from its two buffers; also the real point count."""
    ints, floats = arrays["ints"], arrays["floats"]
    points = PointSet(angle=ints[0], frame_i=ints[1], frame_j=ints[2], value=floats[0], weight=floats[1])
    padded = points.padded(n_padded, fill_angle=fill_angle)
    return ShardData(padded.angle, padded.frame_i, padded.frame_j, padded.value, padded.weight), len(points)


def sample_shard(worker: ShardWorker, index: int, data: ShardData, settings: SamplerSettings | None = None):
    """NUTS on one shard (a separate function so tests can make a shard fail)."""
    return worker.sampler_for(settings or worker.plan.settings).run(index, data)


def quality_problem(divergence_rate: float, rhat_max: float, max_divergence_rate: float, max_rhat: float) -> str | None:
    """Why draws fail the shard checks (divergences first, then R-hat), or None."""
    if divergence_rate > max_divergence_rate:
        return f"divergence rate {divergence_rate:.3f} > {max_divergence_rate:g}"
    if not np.isfinite(rhat_max) or rhat_max > max_rhat:
        return f"R-hat {rhat_max:.3f} > {max_rhat:g}"
    return None


def run_shard(worker: ShardWorker, index: int, arrays: dict) -> ShardResult:
    """One shard, start to end: its draws and diagnostics, or its error and traceback.

    Draws that fail the divergence or R-hat check are sampled once more with the plan's
    ``retry_settings`` (a higher ``target_accept_prob``: smaller steps get through the
    curved parts of the posterior that made the first attempt diverge); the second
    attempt is kept, whatever its checks say, and ``retried_because`` says why.
    """
    start = time.perf_counter()
    plan = worker.plan
    n_points = int(arrays["floats"].shape[1])
    base = dict(index=index, n_points=n_points, rank=worker.rank, host=worker.host)
    settings, retried_because = plan.settings, None
    try:
        data, n_points = shard_data(arrays, plan.n_padded, plan.fill_angle)
        out = sample_shard(worker, index, data)
        rhat, ess = diagnostics(out.draws)
        problem = quality_problem(float(np.mean(out.diverging)), float(np.max(rhat)), plan.max_divergence_rate, plan.max_rhat)
        if problem is not None and plan.retry_settings is not None:
            log.info(
                "CMC: shard %d: %s at target_accept_prob %g; sampling again at %g",
                index,
                problem,
                settings.target_accept_prob,
                plan.retry_settings.target_accept_prob,
            )
            settings, retried_because = plan.retry_settings, problem
            out = sample_shard(worker, index, data, settings)
            rhat, ess = diagnostics(out.draws)
    except Interrupted:
        raise
    except Exception as error:  # noqa: BLE001 - recorded in cmc/result.json, never lost
        log.warning("CMC: shard %d failed on rank %d: %s: %s", index, worker.rank, type(error).__name__, error)
        return ShardResult(
            **base,
            seconds=time.perf_counter() - start,
            error=f"{type(error).__name__}: {error}",
            traceback=traceback_module.format_exc(),
        )
    return ShardResult(
        **base,
        seconds=time.perf_counter() - start,
        chain_method=out.chain_method,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        draws=out.draws,
        diverging=out.diverging,
        num_steps=out.num_steps,
        rhat=rhat,
        ess=ess,
        target_accept_prob=settings.target_accept_prob,
        retried_because=retried_because,
    )


# -- rank 0: receiving, progress, combination -----------------------------------------------


class _Progress:
    """Rank 0's record of finished shards: checkpoints and progress lines."""

    def __init__(self, plan: RunPlan, state: _RootState, output_dir) -> None:
        self.plan = plan
        self.state = state
        self.output_dir = output_dir
        self.results: dict[int, ShardResult] = dict(state.reused)
        self.to_run = plan.n_shards - len(state.reused)
        self.ran = 0
        self.start = time.perf_counter()

    def __call__(self, finished: FarmResult) -> None:
        index = int(finished.task["index"])
        if "farm_error" in finished.header:
            result = ShardResult(
                index=index,
                n_points=int(finished.task["n_points"]),
                rank=finished.rank,
                seconds=finished.seconds,
                error=finished.header["farm_error"],
                traceback=finished.header.get("traceback"),
            )
        else:
            result = ShardResult.from_parts(finished.header, finished.arrays)
            result.rank = finished.rank
        self.results[index] = result
        if not result.failed and self.output_dir is not None:
            checkpoint.save_shard(self.output_dir, result, self.state.fingerprints[index])
        self.ran += 1
        elapsed = time.perf_counter() - self.start
        rate = self.ran / elapsed if elapsed > 0 else float("inf")
        left = self.to_run - self.ran
        eta = left / rate if rate > 0 else float("inf")
        done = len(self.results)
        if result.failed:
            detail = f"FAILED ({result.error})"
        else:
            detail = f"R-hat {result.rhat_max:.3f}, ESS {result.ess_min:.0f}, {result.divergences} divergences"
        log.info(
            "CMC: %d/%d shards done; shard %d on rank %d took %.1f s (%s); %.3g shards/s, ETA %.0f s",
            done,
            self.plan.n_shards,
            index,
            result.rank,
            result.seconds,
            detail,
            rate,
            eta,
        )


def shard_verdicts(results: list[ShardResult], combination_cfg) -> dict[int, str | None]:
    """Why each shard is left out before combining (``None``: good)."""
    verdicts: dict[int, str | None] = {}
    for r in results:
        if r.failed:
            verdicts[r.index] = f"failed: {r.error}"
        elif not np.all(np.isfinite(r.draws)):
            verdicts[r.index] = "non-finite draws"
        elif (problem := quality_problem(r.divergence_rate, r.rhat_max, combination_cfg.max_divergence_rate, combination_cfg.max_rhat)) is not None:
            verdicts[r.index] = problem
        else:
            verdicts[r.index] = None
    return verdicts


def _full_space(plan: RunPlan, sampled: np.ndarray) -> np.ndarray:
    """``(G, n_params + 1)`` full parameter vectors plus sigma from sampled vectors."""
    priors = plan.priors
    full = np.tile(np.append(priors.base_theta, np.nan), (sampled.shape[0], 1))
    full[:, priors.index] = sampled[:, :-1]
    full[:, -1] = sampled[:, -1]
    return full


def combine_shards(cfg, problem, plan: RunPlan, results: list[ShardResult], n_ranks: int) -> CMCResult:
    """Filter, check the success rate, combine; ``FitError`` naming the shards if too few."""
    combination_cfg = cfg.optimization.cmc.combination
    results = sorted(results, key=lambda r: r.index)
    verdicts = shard_verdicts(results, combination_cfg)
    good = [r for r in results if verdicts[r.index] is None]
    needed = math.ceil(combination_cfg.min_success_rate * plan.n_shards - 1e-9)
    combination = {
        "method": combination_cfg.method,
        "n_shards": plan.n_shards,
        "n_good": len(good),
        "min_success_rate": combination_cfg.min_success_rate,
        "max_divergence_rate": combination_cfg.max_divergence_rate,
        "max_rhat": combination_cfg.max_rhat,
        "outlier_zscore": combination_cfg.outlier_zscore,
        "failed": [{"index": r.index, "rank": r.rank, "error": r.error} for r in results if r.failed],
        "excluded_diagnostics": [
            {"index": r.index, "reason": verdicts[r.index]} for r in results if verdicts[r.index] and not r.failed
        ],
    }
    if len(good) < needed:
        left_out = "; ".join(f"shard {r.index} {verdicts[r.index]}" for r in results if verdicts[r.index])
        raise FitError(
            f"CMC: only {len(good)} of {plan.n_shards} shards are good, min_success_rate "
            f"{combination_cfg.min_success_rate:g} needs {needed}: {left_out}"
        )
    combined = combine(
        [r.flat_draws() for r in good],
        method=combination_cfg.method,
        outlier_zscore=combination_cfg.outlier_zscore,
        seed=plan.seed,
    )
    names = [*problem.names, "sigma"]
    sampled_names = [*plan.priors.names, "sigma"]
    for position in combined.outliers:
        shard = good[position]
        scores = np.abs(combined.zscores[position])
        worst = int(np.argmax(scores))
        verdicts[shard.index] = (
            f"outlier: modified z-score {scores[worst]:.1f} > {combination_cfg.outlier_zscore:g} in {sampled_names[worst]}"
        )
    used = [good[k] for k in combined.used]
    combination["used"] = [r.index for r in used]
    combination["n_used"] = len(used)
    combination["excluded_outliers"] = [
        {"index": good[k].index, "reason": verdicts[good[k].index]} for k in combined.outliers
    ]
    shard_means, shard_covs = [], []
    for r in used:
        full = _full_space(plan, r.flat_draws())
        shard_means.append(full.mean(axis=0))
        shard_covs.append(np.atleast_2d(np.cov(full, rowvar=False)))
    fixed = np.ones(len(names), dtype=bool)
    fixed[plan.priors.index] = False
    fixed[-1] = False
    return CMCResult(
        names=names,
        fixed=fixed,
        draws=_full_space(plan, combined.draws),
        shards=results,
        status=verdicts,
        combination=combination,
        plan=plan,
        n_ranks=n_ranks,
        shard_means=np.asarray(shard_means),
        shard_covariances=np.asarray(shard_covs),
        used=[r.index for r in used],
    )


def failure_document(plan: RunPlan, results: list[ShardResult], error: Exception, n_ranks: int, verdicts) -> dict:
    """``cmc/result.json`` of a CMC that failed: the error and every shard's record."""
    return {
        "method": "cmc",
        "error": str(error),
        "parameters": {},
        "shards": [shard_record(r, verdicts.get(r.index)) for r in sorted(results, key=lambda r: r.index)],
        "n_ranks": int(n_ranks),
        "n_points": int(plan.n_points),
        "n_shards": int(plan.n_shards),
        "sampler": sampler_record(plan),
    }


# -- the driver -------------------------------------------------------------------------


def run_cmc(cfg, problem, points: PointSet | None, comm, *, warm_start=None, output_dir: Path | None = None, calibration: float = 1.0):
    """Consensus Monte Carlo of ``problem`` on every rank; rank 0 returns the ``CMCResult``.

    ``points``: the full strict-upper-triangle points on rank 0 (None elsewhere).
    ``warm_start``: the NLSQ result (priors and reparametrisation centred on it) or None.
    ``output_dir``: ``<output>/<dataset>`` on rank 0; finished shards are checkpointed in
    its ``cmc/shards`` (None: no checkpoints). ``calibration`` (>= 1) divides the
    log-likelihood. Other ranks return None. Raises ``FitError`` on every rank when too
    few shards are good, ``Interrupted`` when a stop was requested between shards.
    """
    start = time.perf_counter()
    state = _RootState()
    output_dir = Path(output_dir) if output_dir is not None else None
    plan: RunPlan = comm.run_on_root(lambda: plan_run(cfg, problem, points, warm_start, float(calibration), output_dir, state))
    prepared = time.perf_counter()
    worker = ShardWorker(problem, plan, comm.rank)
    progress = None
    tasks = None
    if comm.is_root:
        progress = _Progress(plan, state, output_dir)
        sizes = [len(s) for s in state.shards]
        tasks = [
            Task({"index": k, "n_points": sizes[k]}, (lambda k=k: _columns(points, state.shards[k])))
            for k in dispatch_order(sizes)
            if k not in state.reused
        ]
    stats: FarmStats | None = run_task_farm(
        comm, tasks, worker, progress, should_stop=_stop_requested, passthrough=(Interrupted,)
    )
    sampled = time.perf_counter()
    stopped = comm.bcast(stats.stopped if comm.is_root else None)
    if stopped:
        done = len(progress.results) if progress else 0
        interrupted = Interrupted(
            f"CMC stopped on request after {done} of {plan.n_shards} shards; finished shards are in "
            f"{checkpoint.shard_folder(output_dir) if output_dir else '(no output folder)'} -- rerun the same command to resume"
        )
        interrupted.collective = True  # raised on every rank together: exit 3, no abort
        raise interrupted
    holder: dict = {}

    def finish() -> None:
        results = list(progress.results.values())
        try:
            result = combine_shards(cfg, problem, plan, results, comm.size)
        except FitError as error:
            if output_dir is not None:
                verdicts = shard_verdicts(results, cfg.optimization.cmc.combination)
                atomic_write_json(output_dir / "cmc" / "result.json", failure_document(plan, results, error, comm.size, verdicts))
            raise
        end = time.perf_counter()
        ran = [r for r in results if not r.reused]
        result.timing_s = {
            "total": end - start,
            "prepare": prepared - start,
            "sampling_wall": sampled - prepared,
            "shard_compute_sum": float(sum(r.seconds for r in ran)),
            "combine": end - sampled,
        }
        result.dispatch = stats.to_dict()
        result.dispatch["shards_run"] = len(ran)
        result.dispatch["shards_reused"] = len(results) - len(ran)
        log.info(
            "CMC: combined %d of %d shards (%s) in %.1f s; parallel efficiency %.2f on %d rank(s)",
            len(result.used),
            plan.n_shards,
            result.combination["method"],
            end - start,
            stats.efficiency,
            comm.size,
        )
        holder["result"] = result

    comm.run_on_root(finish)
    return holder.get("result")
