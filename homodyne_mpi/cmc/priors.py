"""Priors of the CMC shards, their tempering, and the unit-scale reparametrisation.

Rules (details in ``docs/cmc.md``):

- Every sampled parameter has a bounded prior on its ``[min, max]`` from
  ``parameter_space.bounds``: ``TruncatedNormal(mu, sigma)`` or ``Uniform(min, max)``.
  With an NLSQ warm start and ``prior.calibrate: true``, ``mu`` is the NLSQ value and
  ``sigma`` ``width_factor`` NLSQ std (where finite and positive); otherwise the bound's
  ``prior_mu``/``prior_sigma``, defaulting to the starting value and half the bound width.
- Tempering: a shard's prior is the full prior to the power ``1/K`` (``K`` shards),
  exactly the same family with ``sigma * sqrt(K)``. With ``combination.method:
  barycenter`` the shard's likelihood is raised to ``K`` instead and the prior is the
  full one (``likelihood_power``).
- Noise: ``sigma = noise_scale * u`` (c2 units), ``u ~ HalfNormal(NOISE_PRIOR_SCALE)``
  tempered, ``noise_scale`` the median per-angle noise; a point of angle ``a`` has
  standard deviation ``u * sigma_a`` (``sigma_a = 1/weight``).
- Reparametrisation: NUTS samples ``z``, ``theta = loc + scale * z``: ``loc`` the NLSQ
  value (else the prior centre), ``scale`` ``sqrt(K * c / P)`` NLSQ *model* std (``c`` the
  likelihood calibration, ``P`` the likelihood power), the expected shard-posterior width, so the expected posterior
  is the unit normal in ``z`` with the NLSQ correlation (the jackknife std made NUTS
  diverge along ``D0``/``alpha``/``D_offset``). Without a warm start: the tempered prior
  width, capped at half the bound width. The prior is transformed exactly.
- Chain starts: at the NLSQ value, except that where the NLSQ profile check found a flat
  side (``nlsq.profile``) chains ``1..n`` start at its far probes (``chain_starts``), so
  that R-hat sees a valley that one starting point would leave unexplored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..config.fitting import SCALED_LIKELIHOOD_METHODS
from ..nlsq.profile import valley_ends

log = logging.getLogger(__name__)

NOISE_PRIOR_SCALE = 3.0
"""Scale of the half-normal prior of ``sigma / noise_scale`` before tempering."""

INIT_JITTER = 0.5
"""Spread (in shard-posterior widths) of the chains' starting points around the NLSQ value."""


def prior_temper(n_shards: int, likelihood_power: int) -> float:
    """Factor on every prior width of a shard: ``sqrt(K)`` (prior to the power ``1/K``), or 1 when
    the shard's likelihood is raised to a power instead."""
    return 1.0 if likelihood_power > 1 else math.sqrt(n_shards)


@dataclass(frozen=True)
class PriorSpec:
    """Priors of the sampled parameters (full-data, untempered) and the reparametrisation."""

    names: tuple[str, ...]
    """Names of the sampled model parameters, in parameter-vector order."""
    index: np.ndarray
    """Position of each sampled parameter in the full parameter vector."""
    family: tuple[str, ...]
    """``truncated_normal`` or ``uniform`` per sampled parameter."""
    mu: np.ndarray
    sigma: np.ndarray
    """Prior centre and width before tempering (truncated normal; unused for uniform)."""
    low: np.ndarray
    high: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    """Centre and width of the unit-scale variable: ``theta = loc + scale * z``."""
    base_theta: np.ndarray
    """Full parameter vector; its fixed entries are used as they are."""
    noise_scale: float
    """Median per-angle noise estimate of the data, c2 units."""
    n_shards: int
    """``K``: each shard's prior is the full prior to ``1/K``, unless ``likelihood_power`` is ``K``."""
    init_jitter: float
    """Spread of the chains' starting ``z`` around 0."""
    source: str
    """``nlsq`` (warm-start priors) or ``config``."""
    correlation: np.ndarray | None = None
    """NLSQ correlation of the sampled parameters (expected shard posterior shape in ``z``), or None."""
    chain_starts: np.ndarray | None = None
    """``(n, n_sampled)``: where chains ``1..n`` start (chain 0 and the rest at ``loc``): the far ends of
    the flat valleys that the NLSQ profile check found (``nlsq.profile.valley_ends``), or None."""
    likelihood_power: int = 1
    """Power of each shard's likelihood: ``K`` for the ``barycenter`` combination (the prior is then
    not tempered: every shard posterior is as wide as the full one), else 1."""

    @property
    def n_sampled(self) -> int:
        """Sampled model parameters (the noise scale not counted)."""
        return len(self.names)

    @property
    def temper(self) -> float:
        """Tempering factor on every prior width (``prior_temper``)."""
        return prior_temper(self.n_shards, self.likelihood_power)

    def to_dict(self) -> dict:
        """JSON-ready description for ``cmc/result.json``."""
        out = {}
        for k, name in enumerate(self.names):
            entry = {"family": self.family[k], "low": float(self.low[k]), "high": float(self.high[k])}
            if self.family[k] == "truncated_normal":
                entry.update(mu=float(self.mu[k]), sigma=float(self.sigma[k]), sigma_shard=float(self.sigma[k] * self.temper))
            out[name] = entry
        out["sigma"] = {
            "family": "half_normal",
            "scale": float(NOISE_PRIOR_SCALE * self.noise_scale),
            "scale_shard": float(NOISE_PRIOR_SCALE * self.noise_scale * self.temper),
        }
        return {
            "source": self.source,
            "tempering_power": 1.0 / self.temper**2,
            "likelihood_power": self.likelihood_power,
            "parameters": out,
        }


def build_priors(cfg, problem, warm_start, *, n_shards: int, noise_scale: float, calibration: float = 1.0) -> PriorSpec:
    """The shards' priors for ``problem`` (module docstring); ``calibration`` (>= 1), the
    log-likelihood divisor, sets the reparametrisation scale, not the priors."""
    if n_shards < 1:
        raise ValueError("build_priors needs n_shards >= 1")
    if not (calibration >= 1.0 and math.isfinite(calibration)):
        raise ValueError(f"calibration must be finite and >= 1, got {calibration}")
    if not (noise_scale > 0 and math.isfinite(noise_scale)):
        raise ValueError(f"noise_scale must be finite and positive, got {noise_scale}")
    prior_cfg = cfg.optimization.cmc.prior
    names = list(problem.names)
    index = np.flatnonzero(np.asarray(problem.free, dtype=bool))
    power = n_shards if cfg.optimization.cmc.combination.method in SCALED_LIKELIHOOD_METHODS else 1
    temper = prior_temper(n_shards, power)
    base = np.asarray(problem.theta0, dtype=float).copy()
    nlsq_std = model_std = None
    if warm_start is not None:
        jackknife = getattr(warm_start, "std_jackknife", None)  # the prior width: the configured kind when available
        use_jackknife = jackknife is not None and cfg.optimization.nlsq.uncertainty == "jackknife"
        nlsq_std = np.asarray(jackknife if use_jackknife else warm_start.std, dtype=float)
        model_std = np.asarray(warm_start.std, dtype=float)
        base = np.clip(np.asarray(warm_start.theta, dtype=float), problem.lower, problem.upper)
    posterior_width = math.sqrt(n_shards * calibration / power)
    family, mu, sigma, loc, scale = [], [], [], [], []
    used_nlsq = False
    for k in index:
        bound = cfg.parameter_space.bound(names[k].split("[", 1)[0])  # contrast[3] -> contrast
        low, high = float(problem.lower[k]), float(problem.upper[k])
        width = high - low
        nlsq_std_k = float(nlsq_std[k]) if nlsq_std is not None else math.nan
        have_nlsq = math.isfinite(nlsq_std_k) and nlsq_std_k > 0
        centre = float(np.clip(base[k], low, high))
        if have_nlsq and prior_cfg.calibrate:
            fam, m, s = "truncated_normal", centre, prior_cfg.width_factor * nlsq_std_k
            used_nlsq = True
        else:
            fam = "uniform" if bound.type == "Uniform" else "truncated_normal"
            m = float(bound.prior_mu) if bound.prior_mu is not None else float(np.clip(problem.theta0[k], low, high))
            s = float(bound.prior_sigma) if bound.prior_sigma is not None else 0.5 * width
            if warm_start is None:
                centre = m if fam == "truncated_normal" else float(np.clip(problem.theta0[k], low, high))
        model_std_k = float(model_std[k]) if model_std is not None else math.nan
        if math.isfinite(model_std_k) and model_std_k > 0:
            sc = posterior_width * model_std_k
        elif have_nlsq:
            sc = temper * nlsq_std_k
        elif fam == "truncated_normal":
            sc = min(temper * s, 0.5 * width)
        else:
            sc = 0.5 * width
        family.append(fam)
        mu.append(m)
        sigma.append(s)
        loc.append(min(max(centre, low), high))
        scale.append(max(sc, 1e-12 * max(width, 1e-300)))
    correlation = chain_starts = None
    if nlsq_std is not None and index.size and warm_start.covariance is not None:
        correlation = nlsq_correlation(np.asarray(warm_start.covariance, dtype=float), index)
    ends = valley_ends(warm_start.profile) if warm_start is not None else []
    if ends:
        chain_starts = np.array([np.clip(theta, problem.lower, problem.upper)[index] for _, _, theta in ends])
        used = ends[: max(cfg.optimization.cmc.per_shard_mcmc.num_chains - 1, 0)]  # chain 0 starts at the NLSQ point
        where = ", ".join(f"{name} {side}" for name, side, _ in used)
        log.info("CMC: %d chain(s) start at the far ends of the flat NLSQ profiles (%s)", len(used), where)
    spec = PriorSpec(
        names=tuple(names[k] for k in index),
        index=index,
        family=tuple(family),
        mu=np.asarray(mu, dtype=float),
        sigma=np.asarray(sigma, dtype=float),
        low=np.asarray(problem.lower, dtype=float)[index],
        high=np.asarray(problem.upper, dtype=float)[index],
        loc=np.asarray(loc, dtype=float),
        scale=np.asarray(scale, dtype=float),
        base_theta=base,
        noise_scale=float(noise_scale),
        n_shards=int(n_shards),
        init_jitter=INIT_JITTER if nlsq_std is not None else 0.0,
        source="nlsq" if used_nlsq else "config",
        correlation=correlation,
        chain_starts=chain_starts,
        likelihood_power=int(power),
    )
    if power > 1:
        log.info("CMC priors from %s, full; shard likelihoods raised to %d; noise scale %.4g", spec.source, power, noise_scale)
    else:
        log.info(
            "CMC priors from %s, tempered by 1/%d (widths x %.3g); noise scale %.4g", spec.source, n_shards, temper, noise_scale
        )
    return spec


def noise_scale_of(weight: np.ndarray, *, max_samples: int = 1_000_000) -> float:
    """Median noise level ``1/weight`` (c2 units) over the points with a positive weight; above
    ``max_samples`` points an even stride of them (weights are constant per angle)."""
    weight = np.asarray(weight, dtype=float)
    weight = weight[:: max(1, weight.size // max_samples)]
    positive = weight[weight > 0]
    if positive.size == 0:
        raise ValueError("no point has a positive weight")
    return float(np.median(1.0 / positive))


def nlsq_correlation(covariance: np.ndarray, index: np.ndarray, *, floor: float = 1e-12) -> np.ndarray | None:
    """Correlation matrix of the parameters ``index`` from an NLSQ covariance, eigenvalues floored
    at ``floor`` (diagonal renormalised to 1); None when a variance is not finite and positive."""
    block = covariance[np.ix_(index, index)]
    variance = np.diag(block)
    if not np.all(np.isfinite(block)) or np.any(variance <= 0):
        return None
    std = np.sqrt(variance)
    correlation = block / np.outer(std, std)
    correlation = 0.5 * (correlation + correlation.T)
    values, vectors = np.linalg.eigh(correlation)
    correlation = (vectors * np.maximum(values, floor)) @ vectors.T
    norm = np.sqrt(np.diag(correlation))
    return correlation / np.outer(norm, norm)
