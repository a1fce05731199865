"""The program's model against closed forms worked out by hand, not through its code.

Each expected value below is derived in its test from the model's equations and the
program's discretisation (``docs/architecture.md``, section "The model"):

- ``g1 = exp(-q^2/2 * int_{t_i}^{t_j} D dt) * S(Phi)``, ``c2 = offset_phi + contrast_phi g1^2``,
  so ``g1^2 = exp(-q^2 * int D dt) * S^2`` (He et al., PNAS 121(31) e2401162121 (2024));
- ``Phi = q h cos(phi0 - phi) int gamma_dot dt``; ``S = sinc(Phi/2)`` for ``paper``,
  ``sinc(Phi/(2 pi))^2`` for ``homodyne-v2`` (``sinc(x) = sin(x)/x``);
- the integral between frames is a trapezoid sum over the frame samples ``t_k = k dt``
  of the fitted window, the rate at ``t_0`` taken at ``t = dt/2``.

A trapezoid sum is exact for a constant rate and for a rate linear in ``t``, so
``alpha = 0``, ``alpha = 1`` and ``beta = 0`` have exact closed forms; only the first
interval differs from the continuous integral, by the ``dt/2`` rule.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from homodyne_mpi.model import ModelSpec, c2_grid, c2_points

Q = 0.01  # 1/Angstrom
DT = 0.1  # s
N = 40  # frames
PHI = np.array([-30.0, 0.0, 45.0, 95.0])  # degrees; 95 = phi0 + 90 for PHI0 below
PHI0 = 5.0  # degrees
CONTRAST = np.array([0.3, 0.35, 0.4, 0.45])
OFFSET = np.array([1.0, 1.01, 0.99, 1.02])

FRAMES = np.arange(N)
T = FRAMES * DT  # s, the model's time origin at the window's first frame
LAG = np.abs(T[None, :] - T[:, None])  # |t_j - t_i|, s


def program_c2(mode, form, physical, gap=1.0e5):
    """``c2_grid`` and ``c2_points`` (on every point) of the program; they must agree."""
    spec = ModelSpec(mode, form, q=Q, dt=DT, n_frames=N, gap=gap)
    args = (jnp.asarray(physical, dtype=float), jnp.asarray(CONTRAST), jnp.asarray(OFFSET), jnp.asarray(PHI))
    grid = np.asarray(c2_grid(*args, spec))
    angle, i, j = np.meshgrid(np.arange(PHI.size), FRAMES, FRAMES, indexing="ij")
    points = np.asarray(c2_points(*args, jnp.asarray(angle.ravel()), jnp.asarray(i.ravel()), jnp.asarray(j.ravel()), spec))
    np.testing.assert_allclose(points.reshape(grid.shape), grid, rtol=1e-13, atol=0)
    return grid


def interval(rate_times_lag, form):
    """The integral of a constant rate over a lag: exact for ``paper``; ``homodyne-v2`` takes
    every interval ``x`` as ``dt * sqrt((x/dt)^2 + 1e-12)`` (the reference's smooth |x|)."""
    if form == "homodyne-v2":
        return DT * np.sqrt((rate_times_lag / DT) ** 2 + 1e-12)
    return rate_times_lag


def scaled(g1_squared):
    """``offset_phi + contrast_phi * g1^2`` for a ``(N, N)`` or ``(n_phi, N, N)`` ``g1^2``."""
    return OFFSET[:, None, None] + CONTRAST[:, None, None] * np.broadcast_to(g1_squared, (PHI.size, N, N))


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
def test_constant_diffusion_decays_exponentially_in_the_lag(form):
    """alpha = 0: D = D0 + D_offset at every time, so int D dt = (D0 + D_offset) |t_j - t_i|."""
    d0, d_offset = 800.0, 200.0
    expected = scaled(np.exp(-(Q**2) * interval((d0 + d_offset) * LAG, form)))
    got = program_c2("static", form, [d0, 0.0, d_offset])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_linear_diffusion_gives_the_quadratic_integral_and_the_first_interval_rule():
    """alpha = 1, D_offset = 0: D = D0 t, linear, so the trapezoid sum is exact after frame 0.

    For 1 <= i < j: int D dt = D0 (t_j^2 - t_i^2) / 2. The first interval uses D(dt/2)
    at t_0, i.e. (dt/2) (D0 dt/2 + D0 dt) = 3/4 D0 dt^2 instead of 1/2 D0 dt^2, so from
    frame 0: int = D0 t_j^2 / 2 + D0 dt^2 / 4.
    """
    d0 = 2000.0
    running = d0 * T**2 / 2.0 + d0 * DT**2 / 4.0
    running[0] = 0.0
    integral = np.abs(running[None, :] - running[:, None])
    got = program_c2("static", "paper", [d0, 1.0, 0.0])
    np.testing.assert_allclose(got, scaled(np.exp(-(Q**2) * integral)), rtol=1e-12)
    # the first interval really is 3/4, not 1/2, of D0 dt^2 (the time-origin convention)
    first = -np.log((got[:, 0, 1] - OFFSET) / CONTRAST) / Q**2
    np.testing.assert_allclose(first, 0.75 * d0 * DT**2, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, -0.5])
def test_power_law_diffusion_matches_the_exact_integral_within_the_trapezoid_error(alpha):
    """D = D0 t^alpha: int_{t_i}^{t_j} D dt = D0 (t_j^(1+alpha) - t_i^(1+alpha)) / (1 + alpha).

    For i >= 1 the composite trapezoid error is at most (t_j - t_i) dt^2 / 12 * max|D''|
    on [t_i, t_j], with |D''| = D0 |alpha (alpha - 1)| t^(alpha - 2), largest at t_i. The
    program's integral, read back from c2, must sit within that bound of the exact one;
    a wrong sign of alpha misses it by orders of magnitude.
    """
    d0 = 3000.0
    got = program_c2("static", "paper", [d0, alpha, 0.0])
    integral = -np.log((got - OFFSET[:, None, None]) / CONTRAST[:, None, None]) / Q**2
    i, j = np.triu_indices(N, k=1)
    keep = i >= 1
    i, j = i[keep], j[keep]
    exact = d0 * (T[j] ** (1 + alpha) - T[i] ** (1 + alpha)) / (1 + alpha)
    bound = (T[j] - T[i]) * DT**2 / 12.0 * d0 * abs(alpha * (alpha - 1)) * T[i] ** (alpha - 2)
    for a in range(PHI.size):
        error = np.abs(integral[a, i, j] - exact)
        assert np.all(error <= bound * (1 + 1e-6) + 1e-9 * exact), float(np.max(error / bound))
    # and the bound is not vacuous: it is a small fraction of the integral
    assert np.median(bound / exact) < 0.01


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
def test_constant_shear_rate_gives_a_sinc_of_the_lag(form):
    """alpha = beta = 0: int D = D tau and int gamma_dot = gamma tau, tau = |t_j - t_i|.

    Phi = q h cos(phi0 - phi) gamma tau; ``paper``: g1^2 = exp(-q^2 D tau) sinc^2(Phi/2);
    ``homodyne-v2``: exp(-q^2 D tau) sinc^4(Phi/(2 pi)). At phi = phi0 + 90 the shear
    factor is 1 (flow perpendicular to the scattering vector).
    """
    d, gamma, gap = 500.0, 0.02, 1.0e5  # A^2/s, 1/s, A
    physical = [300.0, 0.0, d - 300.0, 0.015, 0.0, gamma - 0.015, PHI0]
    phase = Q * gap * np.cos(np.radians(PHI0 - PHI))[:, None, None] * interval(gamma * LAG, form)[None]
    if form == "paper":
        x = phase / 2.0
        factor_squared = np.where(x == 0, 1.0, np.sin(x) / np.where(x == 0, 1.0, x)) ** 2
    else:
        x = phase / (2.0 * np.pi)
        factor_squared = np.where(x == 0, 1.0, np.sin(x) / np.where(x == 0, 1.0, x)) ** 4
    diffusion_only = np.exp(-(Q**2) * interval(d * LAG, form))
    expected = scaled(diffusion_only[None] * factor_squared)
    got = program_c2("laminar_flow", form, physical, gap=gap)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    perpendicular = int(np.flatnonzero(PHI == PHI0 + 90.0)[0])
    np.testing.assert_allclose(got[perpendicular], scaled(diffusion_only)[perpendicular], rtol=1e-12)
    assert np.max(np.abs(got[1] - got[perpendicular] + OFFSET[perpendicular] - OFFSET[1])) > 1e-3  # shear shows


def test_linear_shear_rate_gives_the_quadratic_strain_and_the_first_interval_rule():
    """beta = 1, gamma_dot_t_offset = 0, alpha = 0: gamma_dot = g0 t, so (as for D above)
    the strain from frame 0 to t_k is g0 t_k^2 / 2 + g0 dt^2 / 4 (k >= 1) and
    g1^2 = exp(-q^2 D tau) sinc^2(q h cos(phi0 - phi) |G_j - G_i| / 2) (``paper``)."""
    d, g0, gap = 400.0, 0.05, 1.0e5
    strain = g0 * T**2 / 2.0 + g0 * DT**2 / 4.0
    strain[0] = 0.0
    x = 0.5 * Q * gap * np.cos(np.radians(PHI0 - PHI))[:, None, None] * np.abs(strain[None, :] - strain[:, None])[None]
    sinc = np.sin(x) / np.where(x == 0, 1.0, x)
    sinc[x == 0] = 1.0
    expected = scaled(np.exp(-(Q**2) * d * LAG)[None] * sinc**2)
    got = program_c2("laminar_flow", "paper", [d, 0.0, 0.0, g0, 1.0, 0.0, PHI0], gap=gap)
    np.testing.assert_allclose(got, expected, rtol=1e-11)
    assert np.min(got[1] - OFFSET[1]) < 0.5 * CONTRAST[1] * np.exp(-(Q**2) * d * LAG.max())  # shear shows
