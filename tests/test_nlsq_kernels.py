"""NLSQ building blocks: structured normal equations, packing, losses, the LM loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.model import ModelSpec, ParameterLayout, c2_grid, c2_points
from homodyne_mpi.nlsq.fit import device_block
from homodyne_mpi.nlsq.kernels import (
    KernelSetup,
    assemble_normal_equations,
    block_accumulators,
    block_frame_sensitivity,
    pack_accumulators,
    unpack_accumulators,
)
from homodyne_mpi.nlsq.losses import LOSSES, loss_rho, loss_weight
from homodyne_mpi.nlsq.solver import LMOptions, levenberg_marquardt

PHI = np.array([-30.0, 0.0, 45.0, 90.0])
PHYSICAL = np.array([5000.0, -0.3, 20.0, 0.01, 0.2, 0.001, 3.0])


def problem(mode, form, scaling, n_frames=30, seed=0):
    spec = ModelSpec(mode, form, q=0.005, dt=0.1, n_frames=n_frames, gap=2e6)
    fixed = dict(fixed_contrast=(0.3,) * 4, fixed_offset=(1.0,) * 4) if scaling == "fixed" else {}
    layout = ParameterLayout(mode, 4, scaling, **fixed)
    physical = PHYSICAL[: spec.n_physical]
    theta = layout.join(np.linspace(0.2, 0.4, 4), np.linspace(0.9, 1.1, 4), physical)
    contrast, offset, _ = layout.split(theta)
    clean = np.asarray(c2_grid(jnp.asarray(physical), contrast, offset, jnp.asarray(PHI), spec))
    noisy = clean + 0.01 * np.random.default_rng(seed).standard_normal(clean.shape)
    points = upper_triangle_points(noisy, np.array([0.01, 0.02, 0.01, 0.03]))
    return spec, layout, jnp.asarray(theta), points


def autodiff_residuals(theta, spec, layout, points, loss, scale):
    """Weighted residuals, their Jacobian by ``jax.jacfwd`` and the loss weights."""

    def residual(th):
        contrast, offset, physical = layout.split(th)
        model = c2_points(physical, contrast, offset, jnp.asarray(PHI), points.angle, points.frame_i, points.frame_j, spec)
        return jnp.asarray(points.weight) * (model - jnp.asarray(points.value))

    jacobian = np.asarray(jax.jacfwd(residual)(theta))
    r = np.asarray(residual(theta))
    weights = np.asarray(loss_weight(jnp.asarray((r / scale) ** 2), loss))
    return jacobian, r, weights


def autodiff_normal_equations(theta, spec, layout, points, loss, scale):
    jacobian, r, weights = autodiff_residuals(theta, spec, layout, points, loss, scale)
    return jacobian.T @ (weights[:, None] * jacobian), jacobian.T @ (weights * r), float(r @ r)


@pytest.mark.parametrize(
    "mode, form, scaling, loss",
    [
        ("laminar_flow", "paper", "individual", "linear"),
        ("laminar_flow", "homodyne-v2", "averaged", "linear"),
        ("static", "paper", "individual", "soft_l1"),
        ("laminar_flow", "paper", "fixed", "cauchy"),
        ("static", "homodyne-v2", "averaged", "huber"),
    ],
)
@pytest.mark.parametrize("chunk_size", [64, 1024])
def test_structured_normal_equations_match_autodiff(mode, form, scaling, loss, chunk_size):
    spec, layout, theta, points = problem(mode, form, scaling)
    theta = theta * 1.01
    setup = KernelSetup(spec, layout, loss, 1.5)
    block = device_block(points, chunk_size)
    pairs = jnp.asarray(np.maximum(layout.scaling_pair_of_angle(), 0))
    terms = [np.asarray(t) for t in block_accumulators(theta, jnp.asarray(PHI), pairs, block, setup=setup)]
    hessian, gradient = assemble_normal_equations(terms, setup)
    expected_h, expected_g, expected_chi2 = autodiff_normal_equations(theta, spec, layout, points, loss, 1.5)
    np.testing.assert_allclose(hessian, expected_h, rtol=1e-10, atol=1e-10 * np.abs(expected_h).max())
    np.testing.assert_allclose(gradient, expected_g, rtol=1e-10, atol=1e-10 * np.abs(expected_g).max())
    assert terms[2] == pytest.approx(expected_chi2, rel=1e-12)


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
@pytest.mark.parametrize("stride", [7, 50])
def test_objective_on_a_strided_subsample_matches_autodiff(mode, stride):
    """The start search's point set: every ``stride``-th point, so a chunk spans more
    angles than a chunk of whole upper triangles. Every pair's contrast and offset
    columns must still be summed (a bound computed for whole triangles dropped the
    pairs past it: their gradient was off by up to 27x and the search's refinements
    crawled)."""
    from test_jackknife_first_pass import objective_of

    spec, layout, theta, points = problem(mode, "paper", "individual")
    subsample = points.take(np.arange(0, len(points), stride))
    theta = np.asarray(theta) * 1.01
    objective = objective_of(spec, layout, theta, subsample, "linear", chunk_size=128)
    hessian, gradient, chi2, _ = objective(theta)
    expected_h, expected_g, expected_chi2 = autodiff_normal_equations(jnp.asarray(theta), spec, layout, subsample, "linear", 1.5)
    np.testing.assert_allclose(gradient, expected_g, rtol=1e-10, atol=1e-10 * np.abs(expected_g).max())
    np.testing.assert_allclose(hessian, expected_h, rtol=1e-10, atol=1e-10 * np.abs(expected_h).max())
    assert chi2 == pytest.approx(expected_chi2, rel=1e-12)


@pytest.mark.parametrize(
    "mode, form, scaling, loss",
    [
        ("laminar_flow", "paper", "individual", "linear"),
        ("static", "homodyne-v2", "averaged", "soft_l1"),
        ("laminar_flow", "homodyne-v2", "fixed", "linear"),
    ],
)
def test_frame_sensitivity_sums_the_weighted_jacobian_over_each_frames_row_and_column(mode, form, scaling, loss):
    spec, layout, theta, points = problem(mode, form, scaling)
    theta = theta * 1.01
    setup = KernelSetup(spec, layout, loss, 1.5)
    pairs = jnp.asarray(np.maximum(layout.scaling_pair_of_angle(), 0))
    sensitivity = np.asarray(block_frame_sensitivity(theta, jnp.asarray(PHI), pairs, device_block(points, 100), setup=setup))
    jacobian, _, lever = autodiff_residuals(theta, spec, layout, points, loss, 1.5)  # rows already weighted
    expected = np.zeros((spec.n_frames, jacobian.shape[1]))
    np.add.at(expected, np.asarray(points.frame_i), lever[:, None] * jacobian)
    np.add.at(expected, np.asarray(points.frame_j), lever[:, None] * jacobian)
    assert sensitivity.shape == expected.shape
    np.testing.assert_allclose(sensitivity, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_pack_unpack_round_trip():
    spec, layout, theta, points = problem("laminar_flow", "paper", "individual")
    setup = KernelSetup(spec, layout)
    block = device_block(points, 256)
    terms = block_accumulators(theta, jnp.asarray(PHI), jnp.arange(4), block, setup=setup)
    unpacked = unpack_accumulators(pack_accumulators(terms), setup)
    for original, restored in zip(terms, unpacked):
        np.testing.assert_array_equal(np.asarray(original), np.asarray(restored))


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_weight_is_the_derivative_of_rho(loss):
    z = jnp.linspace(0.01, 9.0, 50)
    derivative = jax.vmap(jax.grad(lambda x: loss_rho(x, loss)))(z)
    np.testing.assert_allclose(loss_weight(z, loss), derivative, rtol=1e-12)
    np.testing.assert_allclose(loss_rho(z[:1] * 0, loss), 0.0, atol=1e-15)


def exponential_problem(noise=0.0):
    t = np.linspace(0, 5, 200)
    truth = np.array([2.0, 1.3, 0.5])

    def model(theta):
        return theta[0] * np.exp(-theta[1] * t) + theta[2]

    y = model(truth) + noise * np.random.default_rng(1).standard_normal(t.size)

    def evaluate(theta):
        r = model(theta) - y
        jac = np.stack([np.exp(-theta[1] * t), -theta[0] * t * np.exp(-theta[1] * t), np.ones_like(t)], axis=1)
        return jac.T @ jac, jac.T @ r, float(r @ r), float(r @ r)

    return evaluate, truth


def test_lm_converges_inside_bounds():
    evaluate, truth = exponential_problem()
    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([10.0, 10.0, 10.0])
    result = levenberg_marquardt(evaluate, np.array([0.5, 5.0, 2.0]), lower, upper, np.ones(3, bool))
    assert result.converged, result.reason
    np.testing.assert_allclose(result.theta, truth, rtol=1e-6)


def test_lm_respects_bounds_and_fixed_parameters():
    evaluate, _ = exponential_problem()
    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([10.0, 1.0, 10.0])
    free = np.array([True, True, False])
    result = levenberg_marquardt(evaluate, np.array([0.5, 0.5, 0.4]), lower, upper, free)
    assert result.theta[2] == 0.4
    assert result.theta[1] <= 1.0
    assert np.all(result.theta >= lower) and np.all(result.theta <= upper)


def test_lm_hitting_max_iterations_is_not_converged():
    evaluate, _ = exponential_problem()
    result = levenberg_marquardt(
        evaluate,
        np.array([0.5, 5.0, 2.0]),
        np.zeros(3),
        np.full(3, 10.0),
        np.ones(3, bool),
        LMOptions(max_iterations=2),
    )
    assert not result.converged
    assert "max_iterations" in result.reason
    assert result.iterations == 2
