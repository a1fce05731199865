"""The config sections of the fits, ``optimization.nlsq`` and ``optimization.cmc``, written like :mod:`.sections`."""

from __future__ import annotations

from dataclasses import dataclass

from .context import Context, option

NLSQ_LOSSES = ("linear", "soft_l1", "huber", "cauchy")
COMBINATION_METHODS = ("consensus_mc", "robust_consensus_mc", "gaussian_product", "barycenter")
SCALED_LIKELIHOOD_METHODS = ("barycenter",)
"""Combinations whose shards sample their likelihood raised to the number of shards, with the full prior."""


@dataclass(kw_only=True)
class NLSQConfig:
    """Weighted Levenberg-Marquardt over the upper triangle t1 < t2 of every c2."""

    max_iterations: int = option(100, ge=1)
    """Most iterations."""
    xtol: float = option(1e-8, gt=0)
    """Stop when the relative parameter step is below this."""
    gtol: float = option(1e-8, gt=0)
    """Stop when the scaled gradient is below this."""
    ftol: float = option(1e-10, gt=0)
    """Stop when the relative decrease of chi2 is below this."""
    loss: str = option("linear", choices=NLSQ_LOSSES)
    """Residual loss; the robust ones (soft_l1, huber, cauchy) down-weight outliers."""
    loss_scale: float = option(1.0, gt=0)
    """Residual size where a robust loss starts to down-weight, in units of the weighted residual (unused by linear)."""
    chunk_size: int = option(8192, ge=1)
    """Points per jitted chunk; bounds the memory per rank."""
    start_search: bool = True
    """Before the fit, scan a coarse grid of starting D0, alpha, gamma_dot_t0, phi0 on a subsample and start from the best."""
    search_points: int = option(20000, ge=1000)
    """Points of that subsample (the same points on any number of ranks)."""
    uncertainty: str = option("jackknife", choices=("jackknife", "model"))
    """Which standard error result.json reports as ``std``:
    - jackknife: delete-one-block jackknife over the points
    - model: from the covariance (J^T J)^-1 scaled by the reduced chi2"""
    noise_model: str = option("independent", choices=("independent", "frame_shared"))
    """How the points' noise is modelled:
    - independent: every point its own noise (ordinary weighted least squares)
    - frame_shared: plus one noise term per frame shared by its row and column of the
      two-time matrix (speckle, intensity normalisation); generalised least squares with the
      ratio of the two variances estimated from the data, and the reported std from its
      covariance (no jackknife). Needs loss: linear and method: nlsq."""
    jackknife_blocks: int = option(20, ge=2)
    """Blocks of the jackknife."""
    jackknife_blocking: str = option("influence", choices=("influence", "equal"))
    """How the frames are cut into blocks:
    - influence: contiguous blocks that each carry about 1/K of the frames' lever on the
      physical parameters (short blocks where single frames weigh most)
    - equal: contiguous blocks of equal frame counts"""
    jackknife_iterations: int = option(100, ge=1)
    """Most iterations of each jackknife refit (a ceiling: refits stop at the fit's tolerances), started from the full fit."""
    profile_check: bool = False
    """After the fit, move each free physical parameter to +-3 std_model (farther while chi2
    rises by less than 1), refit the others, and warn where chi2 rises so slowly that the
    error bar understates the uncertainty (a flat, curved valley); CMC then starts chains at
    the valley's far ends. Off by default: in a flat valley it can cost several times the fit."""
    jackknife_parallel: str = option("points", choices=("points", "replicates"))
    """How the refits use the ranks:
    - points: all ranks work on each refit in turn, each on its own points
    - replicates: each rank refits its share of the blocks on its own copy of all the
      points (no messages inside a refit; memory: all points on every rank)"""


@dataclass(kw_only=True)
class ShardingConfig:
    """How the points are cut into shards."""

    strategy: str = option("stratified", choices=("stratified", "random"))
    """stratified: every shard holds every angle; random: a seeded random split."""
    num_shards: int | str = option("auto", ge=1, auto=True)
    """Number of shards, or auto (from the two sizes below)."""
    max_points_per_shard: int | str = option("auto", ge=1, auto=True)
    """Largest shard for the auto shard count, or auto."""
    min_points_per_parameter: int = option(200, ge=1)
    """Fewest points per fitted parameter in a shard (auto shard count)."""


@dataclass(kw_only=True)
class PerShardMCMCConfig:
    """NUTS on each shard."""

    num_warmup: int = option(500, ge=1)
    """Warmup (adaptation) steps per chain."""
    num_samples: int = option(1000, ge=1)
    """Kept samples per chain."""
    num_chains: int = option(4, ge=1)
    """Chains per shard."""
    chain_method: str = option("parallel", choices=("parallel", "sequential"))
    """parallel: a host device per chain (below 250 points per shard: sequential, with a warning); sequential: chains in turn."""
    target_accept_prob: float = option(0.8, gt=0, lt=1)
    """NUTS target acceptance probability."""
    retry_target_accept_prob: float = option(0.95, ge=0, lt=1)
    """A shard that fails the divergence or R-hat check is sampled once more with twice the warm-up at this target acceptance
    probability (smaller steps); 0, or a value not above target_accept_prob, means no retry."""
    last_target_accept_prob: float = option(0.99, ge=0, lt=1)
    """A retried shard that still fails is sampled a last time with four times the warm-up at this target acceptance
    probability (the retry's when this is not above it); the attempt nearest the checks is kept."""
    extension_factor: int = option(4, ge=1)
    """An attempt whose divergences pass the checks but whose R-hat does not is run again, the same chains with this many
    times the draws (same keys and warm-up), and thinned back to num_samples; 1 means never."""
    max_tree_depth: int = option(10, ge=1, le=20)
    """NUTS tree depth limit (at most 2^depth leapfrog steps)."""
    min_warmup: int = option(200, ge=0)
    """Floor of the warmup when it is scaled down for a small shard."""
    min_samples: int = option(300, ge=1)
    """Floor of the samples when they are scaled down for a small shard."""
    shard_timeout_s: float | None = option(None, gt=0, unit="s", example="3600' or 'shard_timeout_s: null")
    """Wall-time limit of a shard's sampling, or null for none (the reference's optimization.cmc.per_shard_timeout maps here)."""


@dataclass(kw_only=True)
class CombinationConfig:
    """Shard filtering and consensus."""

    method: str = option("barycenter", choices=COMBINATION_METHODS)
    """How the shard posteriors are combined:
    - consensus_mc: precision-weighted consensus of the shard draws (Scott et al. 2016)
    - robust_consensus_mc: the same after dropping outlying shards (outlier_zscore)
    - gaussian_product: product of Gaussian fits to the shard posteriors
    - barycenter: each shard samples its likelihood raised to the number of shards (a
      sub-posterior as wide as the full posterior, with the full prior); the draws are
      recentred on the average shard mean and pooled, after dropping outlying shards"""
    min_success_rate: float = option(0.8, gt=0, le=1)
    """Fraction of shards that must pass the checks below; fewer is an error naming the failed shards."""
    max_divergence_rate: float = option(0.10, gt=0, le=1)
    """Shards with a larger fraction of divergent transitions are left out."""
    max_rhat: float = option(1.1, gt=1)
    """Shards with a larger split R-hat are left out."""
    outlier_zscore: float = option(3.5, gt=0)
    """robust_consensus_mc and barycenter leave out shards this many robust (median/MAD) z-scores from the median."""


@dataclass(kw_only=True)
class PriorConfig:
    """How CMC priors are built."""

    width_factor: float = option(10.0, gt=0)
    """Width of priors built from the NLSQ fit, in NLSQ standard errors."""
    calibrate: bool = True
    """true: build priors from the NLSQ fit; false: use parameter_space priors as given."""


@dataclass(kw_only=True)
class CMCConfig:
    """Consensus Monte Carlo: NUTS on each shard of the data, then the shard posteriors are combined."""

    seed: int = option(42, ge=0, lt=2**32)
    """Global seed; a shard's seed comes from (seed, shard index), so results do not depend on the number of ranks."""
    sharding: ShardingConfig = option(factory=ShardingConfig)
    per_shard_mcmc: PerShardMCMCConfig = option(factory=PerShardMCMCConfig)
    combination: CombinationConfig = option(factory=CombinationConfig)
    prior: PriorConfig = option(factory=PriorConfig)
    calibrate: bool = True
    """Points of a two-time matrix share frames, so they carry less information than their number says. true: divide the
    log-likelihood by the ratio of the NLSQ jackknife to model variance, widened by Student's t at the jackknife's effective
    degrees of freedom (median over the physical parameters, at least 1; docs/cmc.md), so posterior widths match the data's
    real information; false: no tempering."""


@dataclass(kw_only=True)
class OptimizationConfig:
    """Which fit ``homodyne-mpi run`` does, and its settings."""

    method: str = option("nlsq", choices=("nlsq", "cmc", "both"))
    """nlsq, cmc, or both (NLSQ, then CMC from it); ``run --method`` overrides it."""
    nlsq: NLSQConfig = option(factory=NLSQConfig)
    """Least squares."""
    cmc: CMCConfig = option(factory=CMCConfig)
    """Consensus Monte Carlo."""

    def _check(self, ctx: Context, path: str) -> None:
        problem = frame_shared_problem(self.nlsq, self.method)
        if problem is not None:
            raise ctx.error(f"'{path}.nlsq.noise_model' = 'frame_shared' {problem}", FRAME_SHARED_FIX)


FRAME_SHARED_FIX = "set optimization.nlsq.noise_model: independent, or method: nlsq with loss: linear"


def frame_shared_problem(nlsq: NLSQConfig, method: str) -> str | None:
    """Why ``noise_model: frame_shared`` cannot run with these settings, or None: its generalised least
    squares needs the linear loss, and CMC's likelihood still treats the points as independent."""
    if nlsq.noise_model != "frame_shared":
        return None
    if nlsq.loss != "linear":
        return f"needs loss: linear, not {nlsq.loss!r}"
    if method != "nlsq":
        return f"is for method nlsq only (CMC's likelihood treats the points as independent), not {method!r}"
    return None
