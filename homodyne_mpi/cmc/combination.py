"""Combining shard posteriors into one: pure NumPy.

Shard ``k`` gives draws ``theta_k[g]`` (``g = 1..G``) of its sub-posterior (prior tempered
to ``1/K``; for ``barycenter``, likelihood raised to ``K`` and full prior), with sample mean
``m_k``, covariance ``S_k`` and ``W_k = S_k^-1``.

- ``consensus_mc`` (Scott et al. 2016): combined draw ``g`` is ``(sum_k W_k)^-1 sum_k
  W_k theta_k[g]``; exact when every sub-posterior is Gaussian.
- ``gaussian_product``: seeded draws of ``N((sum W_k)^-1 sum W_k m_k, (sum W_k)^-1)``.
- ``robust_consensus_mc``: ``consensus_mc`` without the shards whose mean is an
  outlier in any parameter: modified z-score ``0.6745 (m_k - median) / MAD`` above
  ``outlier_zscore`` (Iglewicz and Hoaglin), the MAD floored at ``0.6745`` times the
  median shard posterior std, so closely agreeing shards do not make outliers of others,
  and at ``0.6745`` times the shard's own std, so a shard whose posterior is broad (one
  end of a curved valley) is not an outlier for lying within it.
- ``barycenter`` (default): after the same outlier rule (the MAD floored at ``sqrt(K)`` times as much: a
  sub-posterior with the likelihood to the power ``K`` is ``sqrt(K)`` times narrower than the
  spread of the shard estimates it is centred on), every shard's draws recentred on the average
  shard mean, pooled: ``theta_k[g] - m_k + mean_k m_k``. Each sub-posterior (likelihood to
  the power ``K``) is as wide as the full posterior and centred on its shard's estimate; for
  sub-posteriors that differ by their location only this is their Wasserstein barycentre
  (Srivastava, Li and Dunson 2018). Unlike a precision-weighted average of draws it keeps a
  skewed sub-posterior's shape instead of pulling the centre toward its long tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config.fitting import COMBINATION_METHODS as METHODS

MAD_TO_Z = 0.6745
"""Modified z-score factor: the MAD of a normal law is 0.6745 standard deviations."""

COVARIANCE_JITTER = 1e-12
"""Relative ridge added to a shard covariance whose inverse would not exist."""


@dataclass
class Combined:
    """The combined posterior."""

    draws: np.ndarray
    """``(G, d)`` combined draws."""
    mean: np.ndarray
    covariance: np.ndarray
    used: list[int]
    outliers: list[int] = field(default_factory=list)
    """Positions (in the input list) of the shards that entered, and of those left out as outliers."""
    zscores: np.ndarray | None = None
    """``(K, d)`` modified z-scores of the shard means (robust method only)."""


def shard_moments(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean ``(d,)`` and covariance ``(d, d)`` of ``(G, d)`` draws."""
    draws = np.asarray(draws, dtype=np.float64)
    mean = draws.mean(axis=0)
    centred = draws - mean
    covariance = centred.T @ centred / max(draws.shape[0] - 1, 1)
    return mean, 0.5 * (covariance + covariance.T)


def precision(covariance: np.ndarray) -> np.ndarray:
    """Inverse of a covariance; entries with no spread (fixed values) get zero precision and a
    (near-)singular covariance a small relative ridge first."""
    covariance = np.asarray(covariance, dtype=np.float64)
    active = np.diag(covariance) > 0
    out = np.zeros_like(covariance)
    if not active.any():
        return out
    block = covariance[np.ix_(active, active)]
    inverse: np.ndarray
    try:
        inverse = np.linalg.inv(np.linalg.cholesky(block))
        inverse = inverse.T @ inverse
    except np.linalg.LinAlgError:
        ridge = COVARIANCE_JITTER * np.diag(np.diag(block))
        inverse = np.linalg.pinv(block + ridge, hermitian=True)
    out[np.ix_(active, active)] = 0.5 * (inverse + inverse.T)
    return out


def _pooled(covariances: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The shard precisions ``W_k``, the covariance ``(sum_k W_k)^-1`` (zero where no shard has
    spread) and the mask of those fixed parameters."""
    weights = [precision(c) for c in covariances]
    total = np.sum(weights, axis=0)
    active = np.diag(total) > 0
    covariance = np.zeros_like(total)
    if active.any():
        covariance[np.ix_(active, active)] = np.linalg.inv(total[np.ix_(active, active)])
    return weights, 0.5 * (covariance + covariance.T), np.diag(total) <= 0


def consensus_draws(shard_draws: list[np.ndarray]) -> np.ndarray:
    """Scott et al. (2016) consensus draws from shard draw arrays ``(G, d)`` (cut to the shortest);
    parameters with no spread in any shard (fixed values) come from the first shard."""
    if not shard_draws:
        raise ValueError("consensus needs at least one shard")
    n_draws = min(d.shape[0] for d in shard_draws)
    arrays = [np.asarray(d[:n_draws], dtype=np.float64) for d in shard_draws]
    weights, covariance, fixed = _pooled([shard_moments(d)[1] for d in arrays])
    weighted = np.sum([d @ w for d, w in zip(arrays, weights)], axis=0)  # (G, d): sum_k W_k theta_k[g]
    combined = weighted @ covariance  # covariance is symmetric
    combined[:, fixed] = arrays[0][:, fixed]
    return combined


def barycenter_draws(shard_draws: list[np.ndarray]) -> np.ndarray:
    """``(K G, d)`` draws of the barycentre of location-shifted sub-posteriors: each shard's
    ``(G, d)`` draws (cut to the shortest) moved by ``mean_k m_k - m_k`` and stacked, shard by shard."""
    if not shard_draws:
        raise ValueError("the barycentre needs at least one shard")
    n_draws = min(d.shape[0] for d in shard_draws)
    arrays = [np.asarray(d[:n_draws], dtype=np.float64) for d in shard_draws]
    means = np.array([a.mean(axis=0) for a in arrays])
    centre = means.mean(axis=0)
    return np.concatenate([a - m + centre for a, m in zip(arrays, means)])


def gaussian_product(shard_draws: list[np.ndarray], *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, covariance, draws)`` of the product of the shards' Gaussian approximations."""
    if not shard_draws:
        raise ValueError("gaussian_product needs at least one shard")
    moments = [shard_moments(d) for d in shard_draws]
    weights, covariance, fixed = _pooled([cov for _, cov in moments])
    mean = covariance @ np.sum([w @ m for (m, _), w in zip(moments, weights)], axis=0)
    mean[fixed] = moments[0][0][fixed]
    n_draws = min(d.shape[0] for d in shard_draws)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x434D43]))
    draws = rng.multivariate_normal(mean, covariance, size=n_draws, method="eigh")
    draws[:, fixed] = mean[fixed]
    return mean, covariance, draws


def modified_zscores(means: np.ndarray, stds: np.ndarray | None = None) -> np.ndarray:
    """``0.6745 (m_k - median) / MAD``, ``(K, d)``, shard ``k``'s MAD floored at ``0.6745 *
    max(median_k stds, stds_k)`` (a shard whose own posterior is broad may lie far out); where
    the MAD is 0, 1.2533 times the mean absolute deviation is used, and where that is 0, 0."""
    means = np.atleast_2d(np.asarray(means, dtype=np.float64))
    median = np.median(means, axis=0)
    deviation = np.abs(means - median)
    mad = np.broadcast_to(np.median(deviation, axis=0), means.shape)
    if stds is not None:
        stds = np.atleast_2d(stds)
        mad = np.maximum(mad, MAD_TO_Z * np.maximum(np.median(stds, axis=0), stds))
    scores = np.zeros_like(means)
    positive = mad > 0
    scores[positive] = MAD_TO_Z * (means - median)[positive] / mad[positive]
    mean_ad = np.broadcast_to(np.mean(deviation, axis=0), means.shape)
    fallback = ~positive & (mean_ad > 0)
    scores[fallback] = (means - median)[fallback] / (1.253314 * mean_ad[fallback])
    return scores


def robust_outliers(means: np.ndarray, stds: np.ndarray | None = None, *, threshold: float = 3.5) -> tuple[list[int], np.ndarray]:
    """Positions of shards with ``|modified z| > threshold`` in any parameter, and the scores;
    none below 3 shards (a median of two says nothing)."""
    means = np.atleast_2d(np.asarray(means, dtype=np.float64))
    if means.shape[0] < 3:
        return [], np.zeros_like(means)
    scores = modified_zscores(means, stds)
    return [int(k) for k in np.flatnonzero(np.any(np.abs(scores) > threshold, axis=1))], scores


def combine(
    shard_draws: list[np.ndarray],
    *,
    method: str = "robust_consensus_mc",
    outlier_zscore: float = 3.5,
    seed: int = 0,
    likelihood_power: int = 1,
) -> Combined:
    """Combine shard draws ``[(G, d), ...]`` with ``method`` (see the module docstring);
    ``likelihood_power`` is the power of the shard likelihoods (``K`` for ``barycenter``)."""
    if method not in METHODS:
        raise ValueError(f"combination method must be one of {METHODS}, got {method!r}")
    if not shard_draws:
        raise ValueError("no shard to combine")
    used = list(range(len(shard_draws)))
    outliers: list[int] = []
    scores = None
    if method in ("robust_consensus_mc", "barycenter"):
        moments = [shard_moments(d) for d in shard_draws]
        means = np.array([m for m, _ in moments])
        stds = np.sqrt(likelihood_power) * np.array([np.sqrt(np.clip(np.diag(c), 0, None)) for _, c in moments])
        outliers, scores = robust_outliers(means, stds, threshold=outlier_zscore)
        used = [k for k in used if k not in outliers]
    chosen = [shard_draws[k] for k in used]
    if method == "gaussian_product":
        mean, covariance, draws = gaussian_product(chosen, seed=seed)
    elif method == "barycenter":
        draws = barycenter_draws(chosen)
        mean, covariance = shard_moments(draws)
    else:
        draws = consensus_draws(chosen)
        mean, covariance = shard_moments(draws)
    return Combined(draws=draws, mean=mean, covariance=covariance, used=used, outliers=outliers, zscores=scores)
