"""``g1**2`` of a point with its analytic partial derivatives, for the NLSQ Jacobian.

``g1**2`` depends on the parameters only through ``x_C = C_j - C_i`` (Angstrom^2), ``x_G = G_j - G_i`` (strain) and
``cos(phi0 - phi)``; its derivatives by those three are written out by hand (one ``exp``, ``sin`` and ``cos`` per point)
and tested against ``jax.grad`` of ``correlation.g1_squared_from_integrals``.
"""

from __future__ import annotations

import jax.numpy as jnp

from .correlation import SMOOTH_ABS_EPSILON
from .spec import ModelSpec

_TAYLOR_BELOW = 1e-2


def sinc_and_slope(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``sin(x)/x`` and its derivative ``(x cos x - sin x)/x**2``, Taylor near 0."""
    return sinc_and_slope_from_trig(x, jnp.sin(x), jnp.cos(x))


def sinc_and_slope_from_trig(x, sine, cosine) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``sinc(x)`` and its slope given ``sin(x)`` and ``cos(x)``; a Taylor series below ``|x| < 1e-2``
    (error < 1e-20), so a ``sin(x)`` from the angle-addition rule (~1e-16) never meets a tiny ``x``."""
    small = jnp.abs(x) < _TAYLOR_BELOW
    x_safe = jnp.where(small, 1.0, x)
    x2 = x * x
    series_value = 1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0))
    series_slope = x * (-1.0 / 3.0 + x2 / 30.0 * (1.0 - x2 / 28.0))
    value = jnp.where(small, series_value, sine / x_safe)
    slope = jnp.where(small, series_slope, (x_safe * cosine - sine) / (x_safe * x_safe))
    return value, slope


def interval_and_slope(difference: jnp.ndarray, spec: ModelSpec) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Interval ``I(x)`` of ``correlation.interval`` and ``dI/dx`` for a difference ``x``."""
    if spec.shear_form == "homodyne-v2":
        index_space = difference / spec.dt
        root = jnp.sqrt(index_space * index_space + SMOOTH_ABS_EPSILON)
        return spec.dt * root, index_space / root
    return jnp.abs(difference), jnp.sign(difference)


def shear_factor_and_slope(phase: jnp.ndarray, spec: ModelSpec) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Shear factor ``S(Phi)`` of ``correlation.shear_factor`` and ``dS/dPhi``."""
    if spec.shear_form == "homodyne-v2":
        value, slope = sinc_and_slope(phase / (2.0 * jnp.pi))
        return value * value, value * slope / jnp.pi
    value, slope = sinc_and_slope(0.5 * phase)
    return value, 0.5 * slope


def g1_squared_and_slopes(diffusion_step, strain_step, projection, spec: ModelSpec):
    """``(g1**2, d/dx_C, d/dx_G, d/dprojection)`` at each point (the last two zeros when static)."""
    diffusion, diffusion_slope = interval_and_slope(diffusion_step, spec)
    g1_diff_sq = jnp.exp(-(spec.q**2) * diffusion)
    d_diffusion_factor = -(spec.q**2) * diffusion_slope
    if not spec.has_shear:
        zeros = jnp.zeros_like(g1_diff_sq)
        return g1_diff_sq, d_diffusion_factor * g1_diff_sq, zeros, zeros
    strain, strain_slope = interval_and_slope(strain_step, spec)
    amplitude = spec.q * spec.gap
    factor, factor_slope = shear_factor_and_slope(amplitude * projection * strain, spec)
    g1_sq = g1_diff_sq * factor * factor
    d_phase = 2.0 * g1_diff_sq * factor * factor_slope * amplitude
    return g1_sq, d_diffusion_factor * g1_sq, d_phase * projection * strain_slope, d_phase * strain


def paper_shear_g1_squared_and_slopes(diffusion_step, strain_step, projection, sine, cosine, spec: ModelSpec):
    """``g1_squared_and_slopes`` for the ``paper`` form given ``sin``/``cos`` of ``Phi/2 = q h cos(phi0 - phi) (G_j - G_i) / 2``,
    which may be signed (the shear factor is even): its ``sin`` comes from per-frame tables by the angle-addition rule."""
    diffusion, diffusion_slope = interval_and_slope(diffusion_step, spec)
    g1_diff_sq = jnp.exp(-(spec.q**2) * diffusion)
    half_amplitude = 0.5 * spec.q * spec.gap
    factor, factor_slope = sinc_and_slope_from_trig(half_amplitude * projection * strain_step, sine, cosine)
    g1_sq = g1_diff_sq * factor * factor
    d_half_phase = 2.0 * g1_diff_sq * factor * factor_slope * half_amplitude
    return g1_sq, -(spec.q**2) * diffusion_slope * g1_sq, d_half_phase * projection, d_half_phase * strain_step
