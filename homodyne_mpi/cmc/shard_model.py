"""The NumPyro model of one shard: tempered bounded priors, unit-scale reparametrisation,
and the Gaussian likelihood of the shard's strict-upper-triangle points.

Parameters: every sampled model parameter in unit-scale coordinates ``z``,
``theta = loc + scale * z`` (``priors.PriorSpec``), with ``BoundedPrior``: per entry a
tempered truncated normal or a uniform on the bounds, both exact; and the noise
``u = sigma / noise_scale`` with a tempered half-normal prior.

Likelihood: a point of angle ``a`` has ``value ~ Normal(c2_model, u / weight)``
(``weight = 1/sigma_a``), so ``log L = -0.5 * sum((weight * (value - c2) / u)**2)
- n * log(u)`` over the points with ``weight > 0`` (zero-weight points are padding and
contribute nothing). The log-likelihood is divided by ``calibration`` (>= 1).

Geometry: with an NLSQ warm start the shard posterior of ``z`` is expected to be close
to ``Normal(0, R)``, ``R`` the NLSQ correlation matrix (the scale is ``sqrt(K * c)`` NLSQ
model standard errors, ``c`` the calibration). NUTS samples a whitened unconstrained vector ``w`` (see
``ShardModel``) in which that Gaussian is the unit normal, so a diagonal mass matrix,
adapted during warm-up, is enough. Chains start at ``w = jitter * e``, ``e`` standard
normal from the chain's key.
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
from scipy.special import log_ndtr

from ..model import ModelSpec, ParameterLayout, c2_points
from .priors import NOISE_PRIOR_SCALE, PriorSpec

INIT_MARGIN = 1e-6
"""Starting points stay this fraction of the bound width inside the bounds."""

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
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    upper_tail = a > 0  # both bounds above the mean: use the mirrored lower tail
    lo = np.where(upper_tail, -b, a)
    hi = np.where(upper_tail, -a, b)
    log_hi = log_ndtr(hi)
    log_lo = log_ndtr(lo)
    return log_hi + np.log1p(-np.exp(log_lo - log_hi))


def bounded_prior_constants(loc, scale, low, high, uniform):
    """``(loc, scale, log_norm)`` of ``BoundedPrior`` in NumPy: placeholders for the
    uniform entries and every entry's log normalising constant."""
    low = np.asarray(low, dtype=float)
    high = np.asarray(high, dtype=float)
    uniform = np.asarray(uniform, dtype=bool)
    loc = np.where(uniform, 0.5 * (low + high), np.asarray(loc, dtype=float))
    scale = np.where(uniform, high - low, np.asarray(scale, dtype=float))
    tn_norm = log_normal_mass((low - loc) / scale, (high - loc) / scale) + np.log(scale) + _LOG_SQRT_2PI
    return loc, scale, np.where(uniform, np.log(high - low), tn_norm)


class BoundedPrior(dist.Distribution):
    """Independent bounded priors, one per entry: truncated normal or uniform on ``[low, high]``.

    Entries with ``uniform[k]`` true are uniform; the others are ``Normal(loc, scale)``
    truncated to the bounds. The normalising constants are computed once, in NumPy.
    """

    arg_constraints = {}
    pytree_data_fields = ("loc", "scale", "low", "high", "uniform", "log_norm")

    def __init__(self, loc, scale, low, high, uniform, log_norm=None, *, validate_args=None):
        if log_norm is None:
            loc, scale, log_norm = bounded_prior_constants(loc, scale, low, high, uniform)
        self.loc = loc
        self.scale = scale
        self.low = low
        self.high = high
        self.uniform = uniform
        self.log_norm = log_norm
        super().__init__(batch_shape=jnp.shape(low), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def log_prob(self, value):
        standard = (value - self.loc) / self.scale
        quadratic = jnp.where(self.uniform, 0.0, -0.5 * standard * standard)
        return quadratic - self.log_norm

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        key_tn, key_u = jax.random.split(key)
        tn = dist.TruncatedNormal(self.loc, self.scale, low=self.low, high=self.high).sample(key_tn, sample_shape)
        un = jax.random.uniform(key_u, shape, minval=self.low, maxval=self.high)
        return jnp.where(self.uniform, un, tn)


def soft_clamp(y, low, high):
    """``z = low + softplus(y - low) - softplus(y - high)``: a smooth increasing map of the
    real line onto ``(low, high)`` that is the identity, to ``exp(-distance)``, at points
    more than a few units from both bounds (JAX)."""
    return low + jax.nn.softplus(y - low) - jax.nn.softplus(y - high)


def soft_clamp_log_slope(y, low, high, xp=jnp):
    """``log dz/dy`` of ``soft_clamp``: ``sigmoid(y - low) - sigmoid(y - high)``, written as
    ``log sigmoid(y - low) + log sigmoid(high - y) + log(1 - exp(low - high))``."""
    if xp is np:
        log_sigmoid = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
    else:
        log_sigmoid = jax.nn.log_sigmoid
    return log_sigmoid(y - low) + log_sigmoid(high - y) + xp.log(-xp.expm1(low - high))


def soft_clamp_inverse(z, low, high) -> np.ndarray:
    """The ``y`` with ``soft_clamp(y) = z`` for ``low < z < high`` (NumPy):
    ``y = z + log(1 - exp(low - z)) - log(1 - exp(z - high))``."""
    z = np.asarray(z, dtype=float)
    return z + np.log(-np.expm1(low - z)) - np.log(-np.expm1(z - high))


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
    uniform = np.asarray([f == "uniform" for f in priors.family], dtype=bool)
    return UnitPriors(
        loc=(priors.mu - loc) / scale,
        scale=priors.sigma * priors.temper / scale,
        low=(priors.low - loc) / scale,
        high=(priors.high - loc) / scale,
        uniform=uniform,
        noise_scale=NOISE_PRIOR_SCALE * priors.temper,
    )


class ShardModel:
    """Callable NumPyro model of a shard plus the maps between its site and parameters.

    The one sample site ``w`` (``d + 1`` unconstrained reals) is whitened: with ``y`` the
    unbounded coordinates of ``z`` (``z = soft_clamp(y, low, high)``) and ``s = log u``,
    ``y = y0 + L w[:d]`` and ``s = s_scale w[d]``, where ``y0`` is ``z = 0`` and ``L L^T`` is
    the expected shard-posterior covariance of ``y`` (the NLSQ correlation mapped through
    the transform's slope at ``z = 0``; a diagonal without a warm start).

    ``soft_clamp`` is the identity except within a few posterior widths of a bound. A
    logit transform bends every coordinate everywhere: with ``D0`` 15 widths above its
    lower bound, its slope changed by 6% per width, which across the ``D0``/``alpha``/
    ``D_offset`` correlation (condition number ~1e5, narrowest direction 0.01 widths)
    curved the whitened Gaussian into a banana that NUTS could only cross with tiny
    steps, and up to 20% of its transitions diverged.
    The prior of ``z`` (``BoundedPrior``), the half-normal of ``u`` and the log-Jacobians of
    both transforms enter as a factor, so the posterior is exact; NUTS then sees a nearly
    isotropic target and a diagonal mass matrix adapts quickly.
    """

    def __init__(self, priors: PriorSpec, spec: ModelSpec, layout: ParameterLayout, phi, *, calibration: float = 1.0, n_points: int | None = None):
        if not calibration >= 1.0:
            raise ValueError(f"calibration must be >= 1, got {calibration}")
        if priors.n_sampled < 1:
            raise ValueError("CMC needs at least one free parameter")
        self.priors = priors
        self.unit = unit_priors(priors)
        self.spec = spec
        self.layout = layout
        self.phi = jnp.asarray(np.asarray(phi, dtype=float))
        self.calibration = float(calibration)
        self._loc = jnp.asarray(priors.loc)
        self._scale = jnp.asarray(priors.scale)
        self._index = jnp.asarray(priors.index)
        self._base = jnp.asarray(priors.base_theta)
        unit = self.unit
        loc, scale, log_norm = bounded_prior_constants(unit.loc, unit.scale, unit.low, unit.high, unit.uniform)
        self._prior_args = tuple(jnp.asarray(a) for a in (loc, scale, unit.low, unit.high, unit.uniform, log_norm))
        z_start = np.clip(0.0, unit.low + INIT_MARGIN * (unit.high - unit.low), unit.high - INIT_MARGIN * (unit.high - unit.low))
        y0 = soft_clamp_inverse(z_start, unit.low, unit.high)
        slope = np.exp(soft_clamp_log_slope(y0, unit.low, unit.high, xp=np))  # dz/dy at the start
        correlation = priors.correlation if priors.correlation is not None else np.eye(priors.n_sampled)
        self._low = jnp.asarray(unit.low)
        self._high = jnp.asarray(unit.high)
        self._y0 = jnp.asarray(y0)
        self._whiten = jnp.asarray(np.linalg.cholesky(correlation) / slope[:, None])
        n = max(int(n_points or 1), 1)
        self._log_noise_scale = math.sqrt(self.calibration / (2.0 * n))

    @property
    def names(self) -> list[str]:
        """Names of the entries of ``sampled_vector``: sampled parameters, then ``sigma``."""
        return [*self.priors.names, "sigma"]

    @property
    def n_site(self) -> int:
        """Length of the sample site ``w``."""
        return self.priors.n_sampled + 1

    def prior(self) -> BoundedPrior:
        """The tempered prior of ``z``."""
        return BoundedPrior(*self._prior_args)

    def unconstrained(self, w):
        """``(y, s)``: unbounded coordinates of ``z`` and ``log u`` from the whitened ``w``."""
        d = self.priors.n_sampled
        return self._y0 + self._whiten @ w[:d], self._log_noise_scale * w[d]

    def unit_values(self, w):
        """``(z, u)`` from ``w``."""
        y, s = self.unconstrained(w)
        return soft_clamp(y, self._low, self._high), jnp.exp(s)

    def theta(self, z) -> jnp.ndarray:
        """Full parameter vector from ``z`` (fixed entries from ``base_theta``)."""
        return self._base.at[self._index].set(self._loc + self._scale * z)

    def sampled_vector(self, sites: dict) -> jnp.ndarray:
        """``[sampled parameters..., sigma]`` (sigma in c2 units) from the site values."""
        z, u = self.unit_values(sites["w"])
        return jnp.concatenate([self._loc + self._scale * z, jnp.atleast_1d(u * self.priors.noise_scale)])

    def init_values(self, key) -> dict:
        """The chain's start: ``w = jitter * e``, ``e`` standard normal from ``key``."""
        noise = jax.random.normal(key, (self.n_site,), dtype=jnp.float64)
        return {"w": self.priors.init_jitter * noise}

    def log_prior(self, w) -> jnp.ndarray:
        """Log density of ``w``: priors of ``z`` and ``u`` plus the transforms' log-Jacobians."""
        y, s = self.unconstrained(w)
        z = soft_clamp(y, self._low, self._high)
        log_jacobian_z = jnp.sum(soft_clamp_log_slope(y, self._low, self._high))
        u = jnp.exp(s)
        log_noise = dist.HalfNormal(self.unit.noise_scale).log_prob(u) + s
        return jnp.sum(self.prior().log_prob(z)) + log_jacobian_z + log_noise

    def log_likelihood(self, theta, noise, data: ShardData) -> jnp.ndarray:
        """Gaussian log-likelihood of the shard's points (constants dropped), untempered."""
        contrast, offset, physical = self.layout.split(theta)
        model = c2_points(physical, contrast, offset, self.phi, data.angle, data.frame_i, data.frame_j, self.spec)
        weight = data.weight
        residual = weight * (data.value - model) / noise
        n_real = jnp.sum(weight > 0)
        return -0.5 * jnp.sum(residual * residual) - n_real * jnp.log(noise)

    def __call__(self, angle, frame_i, frame_j, value, weight) -> None:
        w = numpyro.sample("w", dist.ImproperUniform(constraints.real_vector, (), event_shape=(self.n_site,)))
        numpyro.factor("prior", self.log_prior(w))
        z, u = self.unit_values(w)
        data = ShardData(angle, frame_i, frame_j, value, weight)
        numpyro.factor("loglik", self.log_likelihood(self.theta(z), u, data) / self.calibration)
