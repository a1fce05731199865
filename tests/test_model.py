"""The physics (``docs/architecture.md``, "The model"): reference rows, symmetry, limits, both evaluators.

The reference rows are the reference ``homodyne`` package's values for its form
(``shear_form: homodyne-v2``), to rtol 1e-9; ``tests/test_physics_independent.py``
reproduces them with the NumPy route of ``tests/independent_c2.py``, which uses no
program code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homodyne_mpi.model import (
    ModelSpec,
    ParameterLayout,
    c2_grid,
    c2_points,
    g1_squared_from_integrals,
    interval,
    rate_times,
)
from homodyne_mpi.model.slopes import g1_squared_and_slopes, paper_shear_g1_squared_and_slopes

ONE = jnp.array([1.0])
HALF = jnp.array([0.5])
PHI0 = jnp.array([0.0])


def first_row(physical, spec, phi=PHI0):
    return np.asarray(c2_grid(jnp.asarray(physical), HALF, ONE, phi, spec))[0, 0]


def test_static_reference_row_normal_diffusion():
    spec = ModelSpec("static", "homodyne-v2", q=0.01, dt=0.1, n_frames=8)
    row = first_row([1000.0, 0.0, 0.0], spec)
    np.testing.assert_allclose(row, 1.0 + 0.5 * np.exp(-0.01 * np.arange(8)), rtol=1e-9)
    np.testing.assert_allclose(row[:3], [1.5, 1.495024916875, 1.490099336653], rtol=1e-9)


def test_static_reference_row_anomalous_diffusion():
    spec = ModelSpec("static", "homodyne-v2", q=0.01, dt=0.1, n_frames=4)
    row = first_row([1000.0, 0.5, 10.0], spec)
    np.testing.assert_allclose(row, [1.5, 1.498602370606, 1.49665306242, 1.494139090874], rtol=1e-9)


def test_laminar_reference_row():
    spec = ModelSpec("laminar_flow", "homodyne-v2", q=0.01, dt=0.1, n_frames=5, gap=1e5)
    row = first_row([1000.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0], spec)
    np.testing.assert_allclose(row, [1.5, 1.077085450044, 1.000000014153, 1.000926417187, 1.000000013825], rtol=1e-9)


def test_paper_form_uses_half_phase_sinc():
    """paper: g1 = g1_diff * sinc(Phi/2); check one point by hand."""
    spec = ModelSpec("laminar_flow", "paper", q=0.01, dt=0.1, n_frames=3, gap=1e5)
    row = first_row([1000.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0], spec)
    phase = 0.01 * 1e5 * 1.0 * 0.01  # q h cos(0) * gamma_dot * dt
    g1 = np.exp(-0.005) * np.sin(phase / 2) / (phase / 2)
    np.testing.assert_allclose(row[1], 1.0 + 0.5 * g1**2, rtol=1e-12)


LAMINAR = [3000.0, -0.6, 20.0, 2e-3, -0.4, 1e-4, 3.0]
PHI = jnp.array([-45.0, 0.0, 30.0, 93.0])


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
def test_grid_is_symmetric_with_diagonal_offset_plus_contrast(mode, form):
    spec = ModelSpec(mode, form, q=0.005, dt=0.05, n_frames=40, gap=2e5)
    physical = jnp.asarray(LAMINAR[: spec.n_physical])
    contrast = jnp.array([0.2, 0.3, 0.25, 0.4])
    offset = jnp.array([1.0, 1.01, 0.99, 1.02])
    grid = np.asarray(c2_grid(physical, contrast, offset, PHI, spec))
    np.testing.assert_allclose(grid, np.swapaxes(grid, 1, 2), rtol=0, atol=1e-15)
    diagonal = np.diagonal(grid, axis1=1, axis2=2)
    np.testing.assert_allclose(diagonal, (offset + contrast)[:, None] * np.ones((1, 40)), rtol=1e-11)


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
def test_point_evaluator_matches_grid(mode, form):
    spec = ModelSpec(mode, form, q=0.005, dt=0.05, n_frames=30, gap=2e5)
    physical = jnp.asarray(LAMINAR[: spec.n_physical])
    contrast = jnp.array([0.2, 0.3, 0.25, 0.4])
    offset = jnp.array([1.0, 1.01, 0.99, 1.02])
    grid = np.asarray(c2_grid(physical, contrast, offset, PHI, spec))
    rng = np.random.default_rng(3)
    angle = rng.integers(0, 4, 500)
    i = rng.integers(0, 30, 500)
    j = rng.integers(0, 30, 500)
    points = np.asarray(c2_points(physical, contrast, offset, PHI, angle, i, j, spec))
    np.testing.assert_allclose(points, grid[angle, i, j], rtol=1e-12, atol=0)


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
def test_flow_perpendicular_to_scattering_gives_static(form):
    static = ModelSpec("static", form, q=0.005, dt=0.05, n_frames=25)
    laminar = ModelSpec("laminar_flow", form, q=0.005, dt=0.05, n_frames=25, gap=2e5)
    phi0 = 3.0
    phi = jnp.array([phi0 + 90.0, phi0 - 90.0])
    shear = np.asarray(c2_grid(jnp.asarray(LAMINAR[:6] + [phi0]), HALF * 1, ONE, phi[:1], laminar))
    still = np.asarray(c2_grid(jnp.asarray(LAMINAR[:3]), HALF, ONE, phi[:1], static))
    np.testing.assert_allclose(shear, still, rtol=1e-12)
    shear_other = np.asarray(c2_grid(jnp.asarray(LAMINAR[:6] + [phi0]), HALF, ONE, phi[1:], laminar))
    np.testing.assert_allclose(shear_other, still, rtol=1e-12)


def test_shear_decorrelates_along_the_flow():
    laminar = ModelSpec("laminar_flow", "paper", q=0.005, dt=0.05, n_frames=25, gap=2e5)
    grid = np.asarray(c2_grid(jnp.asarray(LAMINAR), HALF, ONE, jnp.array([3.0, 93.0]), laminar))
    assert grid[0, 0, 10] < grid[1, 0, 10] - 1e-3


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
def test_gradients_finite_at_t0_with_negative_exponents(form):
    spec = ModelSpec("laminar_flow", form, q=0.005, dt=0.05, n_frames=20, gap=2e5)
    physical = jnp.array([3000.0, -1.9, 0.0, 2e-3, -1.9, 0.0, 3.0])

    def total(p):
        return jnp.sum(c2_grid(p, HALF, ONE, PHI, spec))

    gradient = np.asarray(jax.grad(total)(physical))
    assert np.all(np.isfinite(gradient))
    assert np.all(np.abs(gradient[[0, 1, 3, 4, 6]]) > 0)
    assert float(rate_times(20, 0.05)[0]) == pytest.approx(0.025)


def test_rate_floor_keeps_model_finite():
    spec = ModelSpec("static", "paper", q=0.005, dt=0.05, n_frames=20)
    grid = np.asarray(c2_grid(jnp.array([100.0, 0.0, -1e4]), HALF, ONE, PHI0, spec))
    assert np.all(np.isfinite(grid))
    np.testing.assert_allclose(grid, 1.5, rtol=1e-9)  # D floored at 1e-10: no decay


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
def test_analytic_slopes_match_autodiff(mode, form):
    spec = ModelSpec(mode, form, q=0.005, dt=0.05, n_frames=30, gap=2e5)
    rng = np.random.default_rng(0)
    diffusion = jnp.asarray(rng.uniform(0, 2e5, 200))
    strain = jnp.asarray(rng.uniform(-3e-3, 3e-3, 200).tolist()[:198] + [0.0, 1e-9])
    projection = jnp.asarray(rng.uniform(-1, 1, 200))

    def g1_sq(x_c, x_g, proj):
        integral_g = interval(x_g, 0.0, spec) if spec.has_shear else None
        return g1_squared_from_integrals(interval(x_c, 0.0, spec), integral_g, proj, spec)

    expected = jax.vmap(jax.value_and_grad(g1_sq, argnums=(0, 1, 2)))(diffusion, strain, projection)
    got = g1_squared_and_slopes(diffusion, strain, projection, spec)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=1e-300)
    for k in range(3):
        np.testing.assert_allclose(got[k + 1], expected[1][k], rtol=1e-9, atol=1e-14)
    if mode == "laminar_flow" and form == "paper":
        half_phase = 0.5 * spec.q * spec.gap * projection * strain
        trig = paper_shear_g1_squared_and_slopes(diffusion, strain, projection, jnp.sin(half_phase), jnp.cos(half_phase), spec)
        for k in range(4):
            np.testing.assert_allclose(trig[k], got[k], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("scaling", ["individual", "averaged", "fixed"])
def test_parameter_layout_round_trip(scaling):
    fixed = dict(fixed_contrast=(0.1, 0.2, 0.3), fixed_offset=(1.0, 1.1, 1.2)) if scaling == "fixed" else {}
    layout = ParameterLayout("laminar_flow", 3, scaling, **fixed)
    contrast = np.array([0.1, 0.2, 0.3])
    offset = np.array([1.0, 1.1, 1.2])
    physical = np.arange(7.0)
    theta = layout.join(contrast, offset, physical)
    assert len(theta) == layout.n_params == len(layout.names)
    c, o, p = (np.asarray(x) for x in layout.split(theta))
    np.testing.assert_allclose(p, physical)
    if scaling == "averaged":
        assert layout.names[:2] == ["contrast", "offset"]
        np.testing.assert_allclose(c, 0.2)
    else:
        np.testing.assert_allclose(c, contrast)
        np.testing.assert_allclose(o, offset)
    if scaling == "individual":
        assert layout.names[:6] == ["contrast[0]", "contrast[1]", "contrast[2]", "offset[0]", "offset[1]", "offset[2]"]


def test_model_spec_rejects_bad_values():
    with pytest.raises(ValueError):
        ModelSpec("flowing", "paper", 0.01, 0.1, 10)
    with pytest.raises(ValueError):
        ModelSpec("static", "paper", -0.01, 0.1, 10)
