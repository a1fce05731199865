"""The NumPyro model of one shard: tempered bounded priors, unit-scale reparametrisation,
and the Gaussian likelihood of the shard's strict-upper-triangle points.

Parameters: the sampled model parameters in unit-scale coordinates ``z`` (``theta = loc +
scale * z``, ``priors.PriorSpec``) with exact tempered bounded priors, and the noise ``u =
sigma / noise_scale`` with a tempered half-normal prior.

Likelihood: a point of angle ``a`` has ``value ~ Normal(c2_model, u / weight)``
(``weight = 1/sigma_a``): ``log L = -0.5 * sum((weight * (value - c2) / u)**2) - n *
log(u)`` over the points with ``weight > 0`` (zero weight is padding), divided by
``calibration`` (>= 1) and multiplied by ``priors.likelihood_power`` (``K`` for the
``barycenter`` combination, else 1). With the pairs profiled the sum comes from the pair sums
that profiling needs anyway (``scaling``), not from a second pass over the points. NUTS samples an unconstrained, whitened vector ``w``
(``ShardModel``) in which the expected shard posterior is the unit normal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from scipy.linalg import solve_triangular
from scipy.special import log_ndtr

from ..model import ModelSpec, ParameterLayout, c2_points
from .bounded_maps import soft_clamp, soft_clamp_inverse, soft_clamp_log_slope
from .priors import NOISE_PRIOR_SCALE, PriorSpec
from .scaling import pairs_from_eps

INIT_MARGIN = 1e-6
"""Chain starts read from a point (``site_of``) stay this fraction of the bound width inside the bounds."""

REFERENCE_MARGIN = 0.5
"""The whitening's reference point (``w = 0``) stays this many expected posterior widths inside
each bound (the middle of an interval narrower than twice that), so that a warm start on a bound
does not set the whitening from the clamp's vanishing slope there."""

MIN_SLOPE = 0.5
"""Floor on the clamp's slope used for the whitening: near a bound, or on an interval narrower
than the posterior, the posterior of ``y`` is a few units wide, not ``1 / slope``."""

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class ShardData(NamedTuple):
    """A shard's points as arrays (zero-weight padding allowed)."""

    angle: np.ndarray
    frame_i: np.ndarray
    frame_j: np.ndarray
    value: np.ndarray
    weight: np.ndarray


def log_normal_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(Phi(b) - Phi(a))`` for standardised bounds ``a < b``, stable in the tails (NumPy)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    upper_tail = a > 0  # both bounds above the mean: use the mirrored lower tail
    log_hi = log_ndtr(np.where(upper_tail, -a, b))
    log_lo = log_ndtr(np.where(upper_tail, -b, a))
    return log_hi + np.log1p(-np.exp(log_lo - log_hi))


def bounded_prior_constants(loc, scale, low, high, uniform):
    """``(loc, scale, log_norm)`` of the bounded prior of ``z`` (NumPy, ``ShardModel.log_prior``);
    the uniform entries get placeholder ``loc``/``scale``."""
    low, high, uniform = np.asarray(low, dtype=float), np.asarray(high, dtype=float), np.asarray(uniform, dtype=bool)
    loc = np.where(uniform, 0.5 * (low + high), np.asarray(loc, dtype=float))
    scale = np.where(uniform, high - low, np.asarray(scale, dtype=float))
    tn_norm = log_normal_mass((low - loc) / scale, (high - loc) / scale) + np.log(scale) + _LOG_SQRT_2PI
    return loc, scale, np.where(uniform, np.log(high - low), tn_norm)


def pair_reference(low: np.ndarray, high: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(mean, precision)`` of the Gaussian reference of the pair map (``scaling.conditional_pairs``):
    the middle of the bounds and ``1 / (half width)^2``; no pull (precision 0) where a bound is infinite."""
    finite = np.isfinite(low) & np.isfinite(high)
    half_width = np.where(finite, 0.5 * (high - low), 1.0)
    mean = np.where(finite, 0.5 * (low + high), 0.0)
    return jnp.asarray(mean), jnp.asarray(np.where(finite, 1.0 / (half_width * half_width), 0.0))


class UnitPriors(NamedTuple):
    """The tempered priors of ``z`` (NumPy arrays), and of ``u``."""

    loc: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    uniform: np.ndarray
    noise_scale: float


def unit_priors(priors: PriorSpec) -> UnitPriors:
    """Tempered priors of ``z`` from the priors of ``theta = loc + scale * z``."""
    loc, scale = priors.loc, priors.scale
    return UnitPriors(
        loc=(priors.mu - loc) / scale,
        scale=priors.sigma * priors.temper / scale,
        low=(priors.low - loc) / scale,
        high=(priors.high - loc) / scale,
        uniform=np.asarray([f == "uniform" for f in priors.family], dtype=bool),
        noise_scale=NOISE_PRIOR_SCALE * priors.temper,
    )


class ShardModel:
    """Callable NumPyro model of a shard; its one sample site ``w`` (``d + 1`` reals) holds:

    - ``w_o``, the *whitened* coordinates of the sampled parameters but the profiled pairs:
      ``z = soft_clamp(y, low, high)``, ``y = y0 + L w_o``, ``y0`` the image of ``z = 0`` (moved
      ``REFERENCE_MARGIN`` inside a bound),
      ``L L^T`` the expected shard-posterior covariance of ``y`` (from the NLSQ correlation);
    - when every contrast and offset is sampled, ``xi``: two standard normals per pair,
      mapped into the pair's bounds around its conditional best fit (``scaling``);
    - ``log u = s_scale * w[d]``, ``u`` the noise factor.

    ``soft_clamp`` bends only near a bound (a logit curved the correlated Gaussian into a
    banana). Priors and every log-Jacobian enter as factors, so the posterior is exact;
    chains start at ``w = start + jitter * e``, ``e`` standard normal from the chain's key and
    ``start`` 0 or a far end of a flat NLSQ profile (``chain_starts``).
    """

    def __init__(
        self, priors: PriorSpec, spec: ModelSpec, layout: ParameterLayout, phi, *, calibration: float = 1.0, n_points: int = 1
    ):
        if not calibration >= 1.0:
            raise ValueError(f"calibration must be >= 1, got {calibration}")
        if priors.n_sampled < 1:
            raise ValueError("CMC needs at least one free parameter")
        self.priors, self.spec, self.layout = priors, spec, layout
        self.unit = unit_priors(priors)
        self.phi = jnp.asarray(np.asarray(phi, dtype=float))
        self.calibration = float(calibration) / priors.likelihood_power
        """The log-likelihood's divisor: the calibration over the likelihood power."""
        self._loc, self._scale, self._index, self._base = map(
            jnp.asarray, (priors.loc, priors.scale, priors.index, priors.base_theta)
        )
        unit = self.unit
        loc, scale, log_norm = bounded_prior_constants(unit.loc, unit.scale, unit.low, unit.high, unit.uniform)
        self._prior = tuple(jnp.asarray(a) for a in (loc, scale, unit.uniform, log_norm))
        n_pairs = layout.n_scaling_pairs
        self.n_pairs = n_pairs if n_pairs and set(range(2 * n_pairs)) <= set(priors.index.tolist()) else 0
        other = np.arange(2 * self.n_pairs, priors.n_sampled)
        self._other = jnp.asarray(other)
        low, high = unit.low[other], unit.high[other]
        margin = np.minimum(REFERENCE_MARGIN, 0.5 * (high - low))
        z_start = np.clip(0.0, low + margin, high - margin)
        # z = k soft_clamp(y, low/k, high/k): k the start's distance to its nearer bound
        width = np.maximum(1.0, np.minimum(z_start - low, high - z_start))
        low, high = low / width, high / width
        y0 = soft_clamp_inverse(z_start / width, low, high)
        slope = width * np.maximum(np.exp(soft_clamp_log_slope(y0, low, high, xp=np)), MIN_SLOPE)  # ~dz/dy at the start
        correlation = priors.correlation if priors.correlation is not None else np.eye(priors.n_sampled)
        block = correlation[np.ix_(other, other)]
        self._width, self._low, self._high, self._y0 = map(jnp.asarray, (width, low, high, y0))
        self._whiten = jnp.asarray(np.linalg.cholesky(block) / slope[:, None])
        self._pair_of_angle = jnp.asarray(np.maximum(layout.scaling_pair_of_angle(), 0))
        pairs = self.n_pairs  # bounds of (offset, contrast) per pair; contrasts come first
        self._pair_low = jnp.asarray(np.stack([priors.low[pairs : 2 * pairs], priors.low[:pairs]]))
        self._pair_high = jnp.asarray(np.stack([priors.high[pairs : 2 * pairs], priors.high[:pairs]]))
        self._pair_reference = pair_reference(np.asarray(self._pair_low), np.asarray(self._pair_high))
        self._log_noise_scale = math.sqrt(self.calibration / (2.0 * max(int(n_points or 1), 1)))

    @property
    def n_site(self) -> int:
        """Length of the sample site ``w``."""
        return self.priors.n_sampled + 1

    def transform(self, w, data: ShardData):
        """``(theta, u, chi2, log_jacobian)`` at ``w``: full parameter vector, noise factor, the weighted
        chi-square ``sum (weight * (value - c2))^2`` of the shard when the pairs are profiled (it comes
        with them, ``scaling``; else None), ``log |d(z, u)/dw|`` up to a constant."""
        d = self.priors.n_sampled
        n_other = d - 2 * self.n_pairs
        y = self._y0 + self._whiten @ w[:n_other]
        s = self._log_noise_scale * w[d]
        u = jnp.exp(s)
        z_other = self._width * soft_clamp(y, self._low, self._high)
        z = jnp.zeros(d, dtype=w.dtype).at[self._other].set(z_other)
        theta = self.theta(z)
        log_jacobian = jnp.sum(soft_clamp_log_slope(y, self._low, self._high)) + s
        if not self.n_pairs:
            return theta, u, None, log_jacobian
        _, _, physical = self.layout.split(theta)
        ones = jnp.ones(self.layout.n_angles, dtype=w.dtype)
        g1_sq = c2_points(physical, ones, 0.0 * ones, self.phi, data.angle, data.frame_i, data.frame_j, self.spec)
        p, xi = self.n_pairs, w[n_other:d]
        pair = self._pair_of_angle[data.angle]
        offset, contrast, log_det, chi2 = pairs_from_eps(
            g1_sq,
            data.value,
            data.weight,
            pair,
            p,
            u,
            self.calibration,
            xi[:p],
            xi[p:],
            self._pair_low,
            self._pair_high,
            self._pair_reference,
        )
        theta = theta.at[self._index[:p]].set(contrast).at[self._index[p : 2 * p]].set(offset)
        return theta, u, chi2, log_jacobian + log_det

    def theta(self, z) -> jnp.ndarray:
        """Full parameter vector from ``z`` (fixed entries from ``base_theta``)."""
        return self._base.at[self._index].set(self._loc + self._scale * z)

    def sampled_vector(self, sites: dict, data: ShardData) -> jnp.ndarray:
        """``[sampled parameters..., sigma]`` (sigma in c2 units) from the site values."""
        theta, u, _, _ = self.transform(sites["w"], data)
        return jnp.concatenate([theta[self._index], jnp.atleast_1d(u * self.priors.noise_scale)])

    def init_values(self, key, start) -> dict:
        """The chain's start: ``w = start + jitter * e``, ``e`` standard normal from ``key``."""
        return {"w": start + self.priors.init_jitter * jax.random.normal(key, (self.n_site,), dtype=jnp.float64)}

    def site_of(self, sampled: np.ndarray) -> np.ndarray:
        """The site ``w`` (NumPy) at the sampled parameters ``sampled`` (in ``priors.names`` order),
        inverting ``transform``: the profiled pairs at their conditional best fit (``xi = 0``) and the
        noise factor at 1; a value within ``INIT_MARGIN`` of a bound is moved inside by that much."""
        other = np.asarray(self._other)
        width, low, high, y0 = (np.asarray(a) for a in (self._width, self._low, self._high, self._y0))
        z = (np.asarray(sampled, dtype=float)[other] - self.priors.loc[other]) / self.priors.scale[other] / width
        margin = INIT_MARGIN * (high - low)
        y = soft_clamp_inverse(np.clip(z, low + margin, high - margin), low, high)
        site = np.zeros(self.n_site)
        site[: other.size] = solve_triangular(np.asarray(self._whiten), y - y0, lower=True)
        return site

    def chain_starts(self, num_chains: int) -> np.ndarray:
        """``(num_chains, n_site)`` centres of the chains' starts: 0 (the NLSQ point, or half a width inside
        the bound it sits on), except chains
        ``1..n`` at ``priors.chain_starts`` (the far ends of flat NLSQ profiles)."""
        starts = np.zeros((num_chains, self.n_site))
        for chain, sampled in enumerate(self.priors.chain_starts if self.priors.chain_starts is not None else [], start=1):
            if chain < num_chains:
                starts[chain] = self.site_of(sampled)
        return starts

    def log_prior(self, theta, u) -> jnp.ndarray:
        """Log prior of ``theta``'s sampled entries (tempered truncated normal or uniform per entry of
        ``z``, inside the bounds) and of the noise factor ``u`` (tempered half-normal)."""
        z = (theta[self._index] - self._loc) / self._scale
        loc, scale, uniform, log_norm = self._prior
        standard = (z - loc) / scale
        quadratic = jnp.where(uniform, 0.0, -0.5 * standard * standard)
        return jnp.sum(quadratic - log_norm) + dist.HalfNormal(self.unit.noise_scale).log_prob(u)

    def log_likelihood(self, theta, noise, data: ShardData, chi2=None) -> jnp.ndarray:
        """Gaussian log-likelihood of the shard's points (constants dropped), untempered; ``chi2``, the
        weighted chi-square ``sum (weight * (value - c2))^2`` at ``theta``, when already known."""
        if chi2 is None:
            contrast, offset, physical = self.layout.split(theta)
            model = c2_points(physical, contrast, offset, self.phi, data.angle, data.frame_i, data.frame_j, self.spec)
            residual = data.weight * (data.value - model)
            chi2 = jnp.sum(residual * residual)
        n_real = jnp.sum(data.weight > 0)
        return -0.5 * chi2 / (noise * noise) - n_real * jnp.log(noise)

    def log_density(self, w, data: ShardData) -> jnp.ndarray:
        """Log posterior density of the site ``w`` (constants dropped)."""
        theta, u, chi2, log_jacobian = self.transform(w, data)
        return self.log_prior(theta, u) + log_jacobian + self.log_likelihood(theta, u, data, chi2) / self.calibration

    def __call__(self, angle, frame_i, frame_j, value, weight) -> None:
        w = numpyro.sample("w", dist.ImproperUniform(constraints.real_vector, (), event_shape=(self.n_site,)))
        numpyro.factor("log_density", self.log_density(w, ShardData(angle, frame_i, frame_j, value, weight)))
