"""Transport coefficients and their running time integrals on the frame grid.

The model of He et al., PNAS 121(31) e2401162121 (2024) has two rates, the transport
coefficient ``D(t) = D0 * t**alpha + D_offset`` (Angstrom^2/s) and the shear rate
``gamma_dot(t) = gamma_dot_t0 * t**beta + gamma_dot_t_offset`` (1/s), both floored at
``RATE_FLOOR`` and evaluated at ``t = dt/2`` instead of ``t = 0`` (negative exponents stay
finite), integrated by a cumulative trapezoid on the grid ``t_k = k * dt``.
"""

from __future__ import annotations

import jax.numpy as jnp

RATE_FLOOR = 1e-10
"""Lower bound applied to both rates (their units)."""


def rate_times(n_frames: int, dt: float) -> jnp.ndarray:
    """Times (s) at which the rates are evaluated: ``k * dt``, with ``dt/2`` for ``k = 0``."""
    t = jnp.arange(n_frames, dtype=jnp.float64) * dt
    return t.at[0].set(0.5 * dt)


def power_law_rate(t: jnp.ndarray, prefactor, exponent, offset) -> jnp.ndarray:
    """``max(prefactor * t**exponent + offset, RATE_FLOOR)`` for times ``t > 0``."""
    return jnp.maximum(prefactor * jnp.power(t, exponent) + offset, RATE_FLOOR)


def cumulative_trapezoid(rate: jnp.ndarray, dt: float) -> jnp.ndarray:
    """Running integral ``C_i = dt * sum_{k<i} (r_k + r_{k+1}) / 2``, ``C_0 = 0`` (from frame ``i`` to ``j``: ``|C_j - C_i|``)."""
    steps = 0.5 * dt * (rate[:-1] + rate[1:])
    return jnp.concatenate([jnp.zeros(1, dtype=rate.dtype), jnp.cumsum(steps)])


def diffusion_integral(physical: jnp.ndarray, n_frames: int, dt: float) -> jnp.ndarray:
    """Cumulative integral of ``D(t)`` (Angstrom^2) on the frame grid; ``physical`` starts ``[D0, alpha, D_offset]``."""
    return cumulative_trapezoid(power_law_rate(rate_times(n_frames, dt), physical[0], physical[1], physical[2]), dt)


def shear_integral(physical: jnp.ndarray, n_frames: int, dt: float) -> jnp.ndarray:
    """Cumulative integral of ``gamma_dot(t)`` (strain); ``physical[3:6]`` are ``[gamma_dot_t0, beta, gamma_dot_t_offset]``."""
    return cumulative_trapezoid(power_law_rate(rate_times(n_frames, dt), physical[3], physical[4], physical[5]), dt)
