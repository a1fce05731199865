"""Planning a CMC run on rank 0: shards, priors, sampler settings, fingerprints and reusable
checkpoints. The small ``RunPlan`` is broadcast; shard indices and reused results stay on
rank 0 in a ``RootState``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..data.points import PointSet
from ..errors import InputError
from . import checkpoint
from .priors import PriorSpec, build_priors, noise_scale_of
from .sampler import SamplerSettings, ShardResult, chain_method_for
from .sharding import adapted_counts, assign_shards, shard_count

log = logging.getLogger(__name__)


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
    retry_settings: SamplerSettings | None
    """A shard's second attempt (longer warm-up, higher ``target_accept_prob``), or None."""
    last_settings: SamplerSettings | None
    """Its third and last attempt (twice the retry's warm-up, ``last_target_accept_prob``), or None."""
    extension_factor: int
    """An attempt that fails on R-hat alone is run again with this many times its draws per chain (1: never)."""
    max_divergence_rate: float
    max_rhat: float
    """The shard checks (``combination``) that decide a retry and the combination."""


@dataclass
class RootState:
    """Rank 0's side of the plan: each shard's point indices, fingerprints, reused results."""

    shards: list[np.ndarray] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    reused: dict[int, ShardResult] = field(default_factory=dict)


def doubled_warmup(settings: SamplerSettings) -> SamplerSettings:
    """``settings`` with twice the warm-up (at least 2): each further attempt at a shard."""
    return dataclasses.replace(settings, num_warmup=2 * max(settings.num_warmup, 1))


def retry_settings_for(settings: SamplerSettings, retry_target_accept_prob: float) -> SamplerSettings | None:
    """A shard's second attempt: twice the warm-up and the higher ``target_accept_prob``, or None."""
    if not retry_target_accept_prob > settings.target_accept_prob:
        return None
    return dataclasses.replace(doubled_warmup(settings), target_accept_prob=retry_target_accept_prob)


def last_settings_for(retry: SamplerSettings | None, last_target_accept_prob: float) -> SamplerSettings | None:
    """A shard's last attempt after ``retry``: twice its warm-up at ``last_target_accept_prob``, or at the
    retry's target when that is not lower; None without a retry."""
    if retry is None:
        return None
    target = max(retry.target_accept_prob, last_target_accept_prob)
    return dataclasses.replace(doubled_warmup(retry), target_accept_prob=target)


def plan_run(
    cfg, problem, points: PointSet | None, warm_start, calibration: float, output_dir, state: RootState, n_ranks: int = 1
) -> RunPlan:
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
        n_ranks=n_ranks,
    )
    state.shards = assign_shards(points.angle, n_shards, strategy=cmc.sharding.strategy, seed=cmc.seed)
    sizes = [len(s) for s in state.shards]
    n_padded = max(sizes)
    priors = build_priors(
        cfg, problem, warm_start, n_shards=n_shards, noise_scale=noise_scale_of(points.weight), calibration=calibration
    )
    mcmc = cmc.per_shard_mcmc
    warmup, samples = adapted_counts(
        n_padded, num_warmup=mcmc.num_warmup, num_samples=mcmc.num_samples, min_samples=mcmc.min_samples
    )
    # Device counts are checked on each rank by ShardSampler; here only the shard size.
    method, reason = chain_method_for(mcmc.chain_method, mcmc.num_chains, n_padded, mcmc.num_chains)
    if reason is not None and mcmc.chain_method == "parallel":
        log.warning("CMC: chains run sequentially: %s", reason)
    settings = SamplerSettings(warmup, samples, mcmc.num_chains, method, mcmc.target_accept_prob, mcmc.max_tree_depth)
    fill_angle = int(points.angle.max())
    run_fp = checkpoint.run_fingerprint(
        {
            # the time limit does not change draws: a rerun with a new limit reuses the shards
            "cmc": dataclasses.replace(cmc, per_shard_mcmc=dataclasses.replace(mcmc, shard_timeout_s=None)),
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
        checkpoint.shard_fingerprint(run_fp, k, shard_columns(points, idx)) for k, idx in enumerate(state.shards)
    ]
    if output_dir is not None:
        found = {k: checkpoint.load_shard(output_dir, k, fp) for k, fp in enumerate(state.fingerprints)}
        state.reused = {k: result for k, result in found.items() if result is not None}
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
    retry = retry_settings_for(settings, mcmc.retry_target_accept_prob)
    return RunPlan(
        priors=priors,
        settings=settings,
        n_shards=n_shards,
        n_points=n_points,
        n_padded=n_padded,
        fill_angle=fill_angle,
        seed=int(cmc.seed),
        calibration=float(calibration),
        retry_settings=retry,
        last_settings=last_settings_for(retry, mcmc.last_target_accept_prob),
        extension_factor=int(mcmc.extension_factor),
        max_divergence_rate=float(cmc.combination.max_divergence_rate),
        max_rhat=float(cmc.combination.max_rhat),
    )


def shard_columns(points: PointSet, index: np.ndarray) -> dict[str, np.ndarray]:
    """A shard's points as two buffers: int32 ``(3, n)`` and float64 ``(2, n)``."""
    return {
        "ints": np.stack([points.angle[index], points.frame_i[index], points.frame_j[index]]).astype(np.int32),
        "floats": np.stack([points.value[index], points.weight[index]]).astype(np.float64),
    }
