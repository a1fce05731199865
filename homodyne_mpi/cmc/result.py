"""Shaping a CMC run's outcome on rank 0: shard verdicts, combination, ``cmc/result.json``.

``combine_shards`` combines the good shards into a ``CMCResult`` or raises ``FitError`` (then
``failure_document`` is the ``cmc/result.json``); ``status`` is ``ok``, ``partial`` or ``failed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import FitError
from .combination import combine
from .plan import RunPlan
from .sampler import ShardResult
from .worker import quality_problem

QUANTILES = (0.05, 0.5, 0.95)


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
    shard_covariances: np.ndarray | None = None
    """``(n_used, n_params)`` means and ``(n_used, n_params, n_params)`` covariances of the shards used."""
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
        q05, q50, q95 = np.quantile(self.draws, QUANTILES, axis=0)
        columns = {"mean": self.mean, "std": self.std, "q05": q05, "q50": q50, "q95": q95}
        return {
            name: {**{key: float(column[k]) for key, column in columns.items()}, "fixed": bool(self.fixed[k])}
            for k, name in enumerate(self.names)
        }

    def to_json_dict(self) -> dict:
        """The ``cmc/result.json`` mapping (``docs/cmc.md``)."""
        left_out = {index: why for index, why in self.status.items() if why is not None}
        return {
            "method": "cmc",
            "status": "partial" if left_out else "ok",
            "reason": left_out_reason(left_out) if left_out else None,
            "parameters": self.parameters(),
            "shards": [shard_record(s, self.status.get(s.index)) for s in self.shards],
            "combination": self.combination,
            **run_record(self.plan, self.n_ranks, n_draws=int(self.draws.shape[0])),
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
            assert self.shard_covariances is not None, "shard means and covariances are set together"
            out["shards/mean"] = self.shard_means
            out["shards/covariance"] = self.shard_covariances
        return out


def left_out_reason(left_out: dict[int, str]) -> str:
    """One line naming every left-out shard and why."""
    return "; ".join(f"shard {index} {why}" for index, why in sorted(left_out.items()))


def run_record(plan: RunPlan, n_ranks: int, **counts) -> dict:
    """The ``n_ranks``, ``n_points``, ``n_shards``, ``counts``, ``sampler`` and ``priors`` entries of ``cmc/result.json``."""
    s, retry, last = plan.settings, plan.retry_settings, plan.last_settings
    sampler = {
        "num_warmup": s.num_warmup,
        "num_samples": s.num_samples,
        "num_chains": s.num_chains,
        "chain_method": s.chain_method,
        "target_accept_prob": s.target_accept_prob,
        "retry_target_accept_prob": None if retry is None else retry.target_accept_prob,
        "retry_num_warmup": None if retry is None else retry.num_warmup,
        "last_target_accept_prob": None if last is None else last.target_accept_prob,
        "last_num_warmup": None if last is None else last.num_warmup,
        "extension_factor": plan.extension_factor,
        "max_tree_depth": s.max_tree_depth,
        "dense_mass": s.dense_mass,
        "shard_points_padded": plan.n_padded,
        "seed": plan.seed,
        "calibration": plan.calibration,
    }
    return {
        "n_ranks": int(n_ranks),
        "n_points": int(plan.n_points),
        "n_shards": int(plan.n_shards),
        **counts,
        "sampler": sampler,
        "priors": plan.priors.to_dict(),
    }


def shard_record(result: ShardResult, excluded_reason: str | None) -> dict:
    """One entry of ``shards`` in ``cmc/result.json``: the shard's scalar fields but ``num_samples``
    (``ShardResult.meta``), its diagnostics and whether it was used."""
    return {
        **{key: value for key, value in result.meta().items() if key != "num_samples"},
        "rhat_max": result.rhat_max,
        "ess_min": result.ess_min,
        "divergences": result.divergences,
        "divergence_rate": result.divergence_rate,
        "ok": excluded_reason is None,
        "reused": bool(result.reused),
        "excluded_reason": excluded_reason,
    }


def shard_verdicts(results: list[ShardResult], combination_cfg) -> dict[int, str | None]:
    """Why each shard is left out before combining (``None``: good)."""
    verdicts: dict[int, str | None] = {}
    for r in results:
        if r.failed:
            verdicts[r.index] = f"failed: {r.error}"
        elif not np.all(np.isfinite(np.asarray(r.draws))):
            verdicts[r.index] = "non-finite draws"
        else:
            divergence_rate, rhat_max = r.divergence_rate, r.rhat_max
            assert divergence_rate is not None and rhat_max is not None, "a shard with draws has its diagnostics"
            verdicts[r.index] = quality_problem(
                divergence_rate, rhat_max, combination_cfg.max_divergence_rate, combination_cfg.max_rhat
            )
    return verdicts


def full_space(plan: RunPlan, sampled: np.ndarray) -> np.ndarray:
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
        left_out = left_out_reason({index: why for index, why in verdicts.items() if why})
        raise FitError(
            f"CMC: only {len(good)} of {plan.n_shards} shards are good, min_success_rate "
            f"{combination_cfg.min_success_rate:g} needs {needed}: {left_out}"
        )
    combined = combine(
        [r.flat_draws() for r in good],
        method=combination_cfg.method,
        outlier_zscore=combination_cfg.outlier_zscore,
        seed=plan.seed,
        likelihood_power=plan.priors.likelihood_power,
    )
    names = [*problem.names, "sigma"]
    sampled_names = [*plan.priors.names, "sigma"]
    for position in combined.outliers:
        assert combined.zscores is not None, "outliers come with their z-scores"
        scores = np.abs(combined.zscores[position])
        worst = int(np.argmax(scores))
        why = f"modified z-score {scores[worst]:.1f} > {combination_cfg.outlier_zscore:g} in {sampled_names[worst]}"
        verdicts[good[position].index] = f"outlier: {why}"
    used = [good[k] for k in combined.used]
    outliers = [{"index": good[k].index, "reason": verdicts[good[k].index]} for k in combined.outliers]
    combination.update(used=[r.index for r in used], n_used=len(used), excluded_outliers=outliers)
    full_shards = [full_space(plan, r.flat_draws()) for r in used]
    fixed = np.ones(len(names), dtype=bool)
    fixed[plan.priors.index] = False
    fixed[-1] = False
    return CMCResult(
        names=names,
        fixed=fixed,
        draws=full_space(plan, combined.draws),
        shards=results,
        status=verdicts,
        combination=combination,
        plan=plan,
        n_ranks=n_ranks,
        shard_means=np.asarray([full.mean(axis=0) for full in full_shards]),
        shard_covariances=np.asarray([np.atleast_2d(np.cov(full, rowvar=False)) for full in full_shards]),
        used=[r.index for r in used],
    )


def failure_document(plan: RunPlan, results: list[ShardResult], error: Exception, n_ranks: int, combination_cfg) -> dict:
    """``cmc/result.json`` of a failed CMC: the error as ``reason`` and every shard's record."""
    results = sorted(results, key=lambda r: r.index)
    verdicts = shard_verdicts(results, combination_cfg)
    return {
        "method": "cmc",
        "status": "failed",
        "reason": str(error),
        "error": str(error),
        "parameters": {},
        "shards": [shard_record(r, verdicts.get(r.index)) for r in results],
        **run_record(plan, n_ranks, n_good=sum(1 for v in verdicts.values() if v is None)),
    }
