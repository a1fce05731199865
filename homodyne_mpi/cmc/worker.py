"""One shard on one rank: NUTS, its checks and the retry policy.

``ShardWorker`` is every rank's task-farm work function; ``run_shard`` never raises for a
shard's own failure (the error and traceback go into the ``ShardResult``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import socket
import time
import traceback as traceback_module
from dataclasses import dataclass

import numpy as np

from ..data.points import PointSet
from ..errors import Interrupted
from ..parallel.watchdog import TaskLimit
from .plan import RunPlan
from .sampler import SamplerSettings, ShardDraws, ShardResult, ShardSampler, diagnostics
from .shard_model import ShardData, ShardModel

log = logging.getLogger(__name__)


def shard_time_limit(seconds: float | None) -> TaskLimit | None:
    """The task farm's limit on one shard's wall time (``shard_timeout_s``); None: no limit."""
    if seconds is None:
        return None
    return TaskLimit(
        seconds=float(seconds),
        name=lambda task: f"CMC shard {task['index']}",
        setting="optimization.cmc.per_shard_mcmc.shard_timeout_s",
        advice="the finished shards are saved -- run the same command to resume (raise the limit if the shard was only slow)",
    )


class ShardWorker:
    """Runs shards on this rank; each sampler is built (and compiled) on first use."""

    def __init__(self, problem, plan: RunPlan, rank: int) -> None:
        self.problem, self.plan, self.rank = problem, plan, rank
        self.host = socket.gethostname()
        self._samplers: dict[SamplerSettings, ShardSampler] = {}

    def sampler_for(self, settings: SamplerSettings) -> ShardSampler:
        """The sampler of ``settings`` (the plan's, or its retry's)."""
        if settings not in self._samplers:
            plan, problem = self.plan, self.problem
            model = ShardModel(
                plan.priors, problem.spec, problem.layout, problem.phi, calibration=plan.calibration, n_points=plan.n_padded
            )
            self._samplers[settings] = ShardSampler(model, settings, seed=self.plan.seed)
        return self._samplers[settings]

    def __call__(self, task: dict, arrays: dict) -> tuple[dict, dict]:
        result = run_shard(self, int(task["index"]), arrays)
        return result.meta(), result.arrays()


def shard_data(arrays: dict, n_padded: int, fill_angle: int) -> tuple[ShardData, int]:
    """The padded arrays of a shard from its two buffers; also the real point count."""
    ints, floats = arrays["ints"], arrays["floats"]
    points = PointSet(angle=ints[0], frame_i=ints[1], frame_j=ints[2], value=floats[0], weight=floats[1])
    padded = points.padded(n_padded, fill_angle=fill_angle)
    return ShardData(padded.angle, padded.frame_i, padded.frame_j, padded.value, padded.weight), len(points)


def sample_shard(worker: ShardWorker, index: int, data: ShardData, settings: SamplerSettings | None = None) -> ShardDraws:
    """NUTS on one shard: the one call that samples (tests make it fail; a time limit can wrap it)."""
    return worker.sampler_for(settings or worker.plan.settings).run(index, data)


def extended_settings(settings: SamplerSettings, factor: int) -> SamplerSettings:
    """``settings`` with ``factor`` times the draws per chain: the same keys and warm-up, so its chains
    are the attempt's own chains run ``factor`` times as long."""
    return dataclasses.replace(settings, num_samples=factor * settings.num_samples)


def quality_problem(divergence_rate: float, rhat_max: float, max_divergence_rate: float, max_rhat: float) -> str | None:
    """Why draws fail the shard checks (divergences first, then R-hat), or None."""
    if divergence_rate > max_divergence_rate:
        return f"divergence rate {divergence_rate:.3f} > {max_divergence_rate:g}"
    if not np.isfinite(rhat_max) or rhat_max > max_rhat:
        return f"R-hat {rhat_max:.3f} > {max_rhat:g}"
    return None


def retry_thresholds(plan: RunPlan) -> tuple[float, float]:
    """``(divergence rate, R-hat)`` above which a shard is sampled again: a tenth of the combination's
    divergence limit and half its R-hat excess (0.01 and 1.05 for the defaults 0.10 and 1.1)."""
    return plan.max_divergence_rate / 10.0, 1.0 + (plan.max_rhat - 1.0) / 2.0


def attempt_badness(out: ShardDraws, rhat: np.ndarray, max_divergence_rate: float, max_rhat: float) -> float:
    """How far an attempt's draws miss the thresholds, in units of each threshold: the larger of
    divergence rate / ``max_divergence_rate`` and (R-hat - 1) / (``max_rhat`` - 1); at most 1 passes."""
    rhat_max = float(np.max(rhat))
    if not np.isfinite(rhat_max):
        return math.inf
    return max(float(np.mean(out.diverging)) / max_divergence_rate, (rhat_max - 1.0) / (max_rhat - 1.0))


@dataclass
class Attempt:
    """One attempt at a shard: its settings, draws and diagnostics against the retry thresholds."""

    settings: SamplerSettings
    out: ShardDraws
    rhat: np.ndarray
    ess: np.ndarray
    problem: str | None
    """Why the draws miss the retry thresholds (``quality_problem``), or None."""
    badness: float
    """``attempt_badness``: at most 1 passes."""

    @property
    def extended_to(self) -> int:
        """Draws per chain when the attempt was extended for its R-hat (more than ``settings.num_samples``), else 0."""
        draws = int(self.out.draws.shape[1])
        return draws if draws > self.settings.num_samples else 0


def checked(settings: SamplerSettings, out: ShardDraws, thresholds: tuple[float, float]) -> Attempt:
    """``out``'s diagnostics and its place against the retry ``thresholds``."""
    rhat, ess = diagnostics(out.draws)
    problem = quality_problem(float(np.mean(out.diverging)), float(np.max(rhat)), *thresholds)
    return Attempt(settings, out, rhat, ess, problem, attempt_badness(out, rhat, *thresholds))


def only_rhat_fails(attempt: Attempt, thresholds: tuple[float, float]) -> bool:
    """True when the attempt's divergences are within the threshold and its R-hat is not: chains that
    mix slowly but without bias, which more draws settle and a new warm-up would not."""
    return attempt.problem is not None and float(np.mean(attempt.out.diverging)) <= thresholds[0]


def sampled_attempt(worker: ShardWorker, index: int, data: ShardData, settings: SamplerSettings, thresholds) -> Attempt:
    """Sample the shard with ``settings``; an attempt failing on R-hat alone is run again with
    ``plan.extension_factor`` times its draws per chain (``extended_settings``)."""
    attempt = checked(settings, sample_shard(worker, index, data, settings), thresholds)
    if worker.plan.extension_factor > 1 and only_rhat_fails(attempt, thresholds):
        longer = extended_settings(settings, worker.plan.extension_factor)
        log.info(
            "CMC: shard %d: %s with divergences within the limit; running its chains to %d draws each",
            index,
            attempt.problem,
            longer.num_samples,
        )
        out = sample_shard(worker, index, data, longer)
        attempt = checked(settings, out, thresholds)
        if attempt.problem is not None:
            attempt.problem += f" after {longer.num_samples} draws per chain"
    return attempt


def thinned(draws: np.ndarray, num_samples: int) -> np.ndarray:
    """``(chains, n, d)`` draws thinned to ``num_samples`` per chain (every ``n // num_samples``-th, the
    last ``num_samples`` of those): what the combination takes from an extended attempt."""
    step = max(draws.shape[1] // num_samples, 1)
    return draws[:, step - 1 :: step][:, -num_samples:]


def run_shard(worker: ShardWorker, index: int, arrays: dict) -> ShardResult:
    """One shard, start to end: its draws and diagnostics, or its error and traceback.

    Draws above the ``retry_thresholds`` are sampled again with ``plan.retry_settings``, and if
    still above them, a last time with ``plan.last_settings``; an attempt whose divergences pass but
    whose R-hat does not is first extended to ``plan.extension_factor`` times its draws per chain
    (``sampled_attempt``). The attempt that misses the thresholds least is kept (``attempt_badness``),
    its draws thinned back to ``num_samples`` per chain (R-hat and ESS are of all its draws), and
    ``retried_because`` says why each retry ran."""
    start = time.perf_counter()
    plan = worker.plan
    result = functools.partial(
        ShardResult, index=index, n_points=int(arrays["floats"].shape[1]), rank=worker.rank, host=worker.host
    )
    thresholds = retry_thresholds(plan)
    retried_because = None
    try:
        data, _ = shard_data(arrays, plan.n_padded, plan.fill_angle)
        attempt = kept = sampled_attempt(worker, index, data, plan.settings, thresholds)
        for settings in [s for s in (plan.retry_settings, plan.last_settings) if s is not None]:
            if attempt.problem is None:
                break
            retried_because = attempt.problem if retried_because is None else f"{retried_because}; then {attempt.problem}"
            log.info(
                "CMC: shard %d: %s; sampling again with %d warm-up draws at target_accept_prob %g",
                index,
                attempt.problem,
                settings.num_warmup,
                settings.target_accept_prob,
            )
            attempt = sampled_attempt(worker, index, data, settings, thresholds)
            if attempt.badness <= kept.badness:
                kept = attempt
    except Interrupted:
        raise
    except Exception as error:  # noqa: BLE001 - recorded in cmc/result.json, never lost
        log.warning("CMC: shard %d failed on rank %d: %s: %s", index, worker.rank, type(error).__name__, error)
        failed = f"{type(error).__name__}: {error}"
        return result(seconds=time.perf_counter() - start, error=failed, traceback=traceback_module.format_exc())
    settings, out = kept.settings, kept.out
    return result(
        seconds=time.perf_counter() - start,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        rhat=kept.rhat,
        ess=kept.ess,
        target_accept_prob=settings.target_accept_prob,
        retried_because=retried_because,
        extended_to=kept.extended_to,
        draws=thinned(out.draws, settings.num_samples),
        diverging=out.diverging,
        num_steps=out.num_steps,
        chain_method=out.chain_method,
    )
