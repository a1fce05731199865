"""The two-time correlation ``c2(phi, t1, t2)`` (``docs/architecture.md``, "The model"), in JAX (float64).

``c2 = offset_phi + contrast_phi * g1**2`` with ``g1 = g1_diff * shear_factor``:

- ``g1_diff = exp(-q**2 / 2 * |C_j - C_i|)``, ``C`` the running integral of ``D(t)``;
- ``Phi = q * h * cos(phi0 - phi) * |G_j - G_i|``, ``G`` the running integral of ``gamma_dot(t)``;
  ``shear_factor = sinc(Phi/2)`` (``paper``) or ``sinc(Phi/(2 pi))**2`` (``homodyne-v2``).

``homodyne-v2`` also smooths every ``|C_j - C_i|`` as the reference package does (``interval``). ``c2_points``
evaluates ``c2`` at points ``(angle index, i, j)``; ``c2_grid`` at every one of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .spec import ModelSpec
from .transport import diffusion_integral, shear_integral

jax.config.update("jax_enable_x64", True)

SMOOTH_ABS_EPSILON = 1e-12
"""Squared index-space epsilon of the reference package's smooth absolute value."""

_SINC_TAYLOR_BELOW = 1e-4


def sinc(x: jnp.ndarray) -> jnp.ndarray:
    """Unnormalised ``sin(x)/x``, with a Taylor series near 0 so gradients stay finite."""
    small = jnp.abs(x) < _SINC_TAYLOR_BELOW
    x_safe = jnp.where(small, 1.0, x)
    x2 = x * x
    return jnp.where(small, 1.0 - x2 / 6.0 + x2 * x2 / 120.0, jnp.sin(x_safe) / x_safe)


def interval(cumulative_j: jnp.ndarray, cumulative_i: jnp.ndarray, spec: ModelSpec) -> jnp.ndarray:
    """Integral of a rate between two frames: ``|C_j - C_i|`` (``paper``), or the reference's
    smooth absolute value ``dt * sqrt(((C_j - C_i)/dt)**2 + 1e-12)`` (``homodyne-v2``)."""
    difference = cumulative_j - cumulative_i
    if spec.shear_form == "homodyne-v2":
        index_space = difference / spec.dt
        return spec.dt * jnp.sqrt(index_space * index_space + SMOOTH_ABS_EPSILON)
    return jnp.abs(difference)


def shear_factor(phase: jnp.ndarray, spec: ModelSpec) -> jnp.ndarray:
    """Factor of ``g1`` from laminar shear, given ``Phi`` (radians)."""
    if spec.shear_form == "homodyne-v2":
        return sinc(phase / (2.0 * jnp.pi)) ** 2
    return sinc(0.5 * phase)


def shear_projection(physical: jnp.ndarray | np.ndarray, phi_deg: jnp.ndarray | np.ndarray) -> jnp.ndarray:
    """``cos(phi0 - phi)`` for scattering angles ``phi`` (degrees); ``phi0`` is entry 6."""
    return jnp.cos(jnp.deg2rad(physical[6] - phi_deg))


def g1_squared_from_integrals(
    diffusion: jnp.ndarray, strain: jnp.ndarray | None, projection: jnp.ndarray | None, spec: ModelSpec
) -> jnp.ndarray:
    """``g1**2`` from the diffusion integral (Angstrom^2) and the accumulated strain; ``strain``
    and ``projection`` (``cos(phi0 - phi)``) broadcast together, both None for static modes."""
    g1_diff_sq = jnp.exp(-(spec.q**2) * diffusion)
    if strain is None or projection is None:
        return g1_diff_sq
    phase = spec.q * spec.gap * projection * strain
    return g1_diff_sq * shear_factor(phase, spec) ** 2


def transport_integrals(physical: jnp.ndarray, spec: ModelSpec) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Running integrals ``(C, G)`` on the frame grid; ``G`` is ``None`` for static modes."""
    diffusion = diffusion_integral(physical, spec.n_frames, spec.dt)
    strain = shear_integral(physical, spec.n_frames, spec.dt) if spec.has_shear else None
    return diffusion, strain


def c2_grid(
    physical: jnp.ndarray, contrast: jnp.ndarray, offset: jnp.ndarray, phi_deg: jnp.ndarray, spec: ModelSpec
) -> jnp.ndarray:
    """``c2`` on the full grid, shape ``(n_phi, n_frames, n_frames)``; ``contrast`` and ``offset`` hold one value per angle."""
    every = slice(None)  # broadcasting indices: angle [:, None, None], frame_i [:, None], frame_j [None, :]
    return c2_points(physical, contrast, offset, phi_deg, (every, None, None), (every, None), (None, every), spec)


def c2_points(
    physical: jnp.ndarray,
    contrast: jnp.ndarray,
    offset: jnp.ndarray,
    phi_deg: jnp.ndarray,
    angle_index: jnp.ndarray | np.ndarray | tuple,
    frame_i: jnp.ndarray | np.ndarray | tuple,
    frame_j: jnp.ndarray | np.ndarray | tuple,
    spec: ModelSpec,
) -> jnp.ndarray:
    """``c2`` at points ``(angle_index, frame_i, frame_j)`` (0-based indices, or index tuples, that broadcast together)."""
    diffusion, strain = transport_integrals(physical, spec)
    diffusion_ij = interval(diffusion[frame_j], diffusion[frame_i], spec)
    strain_ij: jnp.ndarray | None = None
    projection: jnp.ndarray | None = None
    if strain is not None:
        strain_ij = interval(strain[frame_j], strain[frame_i], spec)
        projection = shear_projection(physical, phi_deg)[angle_index]
    g1_sq = g1_squared_from_integrals(diffusion_ij, strain_ij, projection, spec)
    return offset[angle_index] + contrast[angle_index] * g1_sq
