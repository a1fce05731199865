"""The jackknife's shared first pass: every refit's first system from one pass at the optimum.

Checked three ways: the systems equal the normal equations of the kept points computed
by NumPy from an autodiff Jacobian (no kernel code), and the refit's own masked pass;
the replicates of the shared-pass jackknife equal those of refits that make their own
first pass (``shared_first_pass=False``) to 1e-8 model std, on an easy static fit and
on a laminar fit held on a bound; and the jackknife makes fewer passes over the data.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_nlsq_bounds import LAMINAR, bounded_fit
from test_nlsq_fit import STATIC_TRUTH, simulate
from test_nlsq_kernels import PHI, autodiff_residuals, problem

from homodyne_mpi.config import load_config
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.nlsq import build_problem, fit_nlsq
from homodyne_mpi.nlsq.fit import NO_EXCLUSION, DistributedObjective, NLSQProblem
from homodyne_mpi.nlsq.jackknife import run_jackknife
from homodyne_mpi.nlsq.left_out import block_of_frames, first_systems, touching_sums
from homodyne_mpi.nlsq.losses import loss_rho
from homodyne_mpi.parallel import SerialComm

UNEVEN_BLOCKS = np.array([[0, 1], [1, 4], [4, 12], [12, 29], [29, 30]])
"""Frame blocks of 1 to 17 frames over 30 frames, as influence blocking cuts them."""


def objective_of(spec, layout, theta, points, loss: str, chunk_size: int, comm=None, n_points=None) -> DistributedObjective:
    """The fit's objective over ``points`` (angles ``PHI``), on one rank unless ``comm`` is given.

    ``n_points`` is the global count when ``points`` are one rank's share (default: all of them).
    """
    theta = np.asarray(theta)
    n_points = len(points) if n_points is None else n_points
    nlsq = NLSQProblem(spec, layout, PHI, theta, theta - 1.0, theta + 1.0, np.ones(len(theta), bool), n_points)
    comm = SerialComm() if comm is None else comm
    return DistributedObjective(nlsq, points, comm, chunk_size=chunk_size, loss=loss, loss_scale=1.5)


def brute_force_system(theta, spec, layout, points, loss, block):
    """``(J^T W J, J^T W r, chi2, cost)`` of the points touching no frame of ``block``, by NumPy."""
    jacobian, r, weights = autodiff_residuals(theta, spec, layout, points, loss, 1.5)
    start, stop = block
    frame_i, frame_j = np.asarray(points.frame_i), np.asarray(points.frame_j)
    kept = ~(((frame_i >= start) & (frame_i < stop)) | ((frame_j >= start) & (frame_j < stop)))
    jacobian, r, weights = jacobian[kept], r[kept], weights[kept]
    cost = 1.5**2 * float(np.sum(np.asarray(loss_rho(jnp.asarray((r / 1.5) ** 2), loss))))
    return jacobian.T @ (weights[:, None] * jacobian), jacobian.T @ (weights * r), float(r @ r), cost


def assert_same_system(system, expected, rtol):
    hessian, gradient, chi2, cost = system
    np.testing.assert_allclose(hessian, expected[0], rtol=rtol, atol=rtol * np.abs(expected[0]).max())
    np.testing.assert_allclose(gradient, expected[1], rtol=rtol, atol=rtol * np.abs(expected[1]).max())
    assert chi2 == pytest.approx(expected[2], rel=rtol)
    assert cost == pytest.approx(expected[3], rel=rtol)


def test_block_of_frames_and_touching_sums():
    np.testing.assert_array_equal(block_of_frames(np.array([[0, 2], [2, 3], [3, 6]]), 6), [0, 0, 1, 2, 2, 2])
    with pytest.raises(ValueError):
        block_of_frames(np.array([[0, 2], [3, 6]]), 6)
    by_pair = np.arange(1.0, 10.0).reshape(3, 3, 1)  # by_pair[a, c]: points with i in a, j in c
    touching = np.asarray(touching_sums(jnp.asarray(by_pair)))[:, 0]
    np.testing.assert_array_equal(touching, [1 + 2 + 3 + 4 + 7, 4 + 5 + 6 + 2 + 8, 7 + 8 + 9 + 3 + 6])


CASES = [
    ("laminar_flow", "paper", "individual", "linear", 64),
    ("laminar_flow", "paper", "individual", "linear", 4096),  # one chunk holds every point
    ("static", "homodyne-v2", "averaged", "soft_l1", 100),
    ("laminar_flow", "homodyne-v2", "fixed", "cauchy", 64),  # no scaling pairs fitted
]


@pytest.mark.parametrize("mode, form, scaling, loss, chunk_size", CASES)
def test_first_systems_are_the_normal_equations_of_the_kept_points(mode, form, scaling, loss, chunk_size):
    spec, layout, theta, points = problem(mode, form, scaling)
    theta = theta * 1.01  # residuals not at an optimum: the gradient is not zero
    objective = objective_of(spec, layout, theta, points, loss, chunk_size)
    systems = first_systems(objective, UNEVEN_BLOCKS, np.asarray(theta))
    assert objective.passes == 1 and len(systems) == len(UNEVEN_BLOCKS)
    for block, system in zip(UNEVEN_BLOCKS, systems):
        assert_same_system(system, brute_force_system(theta, spec, layout, points, loss, block), rtol=1e-10)
        objective.excluded_frames = block.astype(np.int32)  # the refit's own (masked) pass
        assert_same_system(system, objective(np.asarray(theta)), rtol=1e-11)
        objective.excluded_frames = NO_EXCLUSION


def jackknife_both_ways(result, problem, options):
    """The jackknife with the shared first pass and with each refit making its own (same fit)."""
    shared = run_jackknife(result, problem, options)
    own = run_jackknife(result, problem, options, shared_first_pass=False)
    return shared, own


def assert_same_replicates(result, shared, own, unconverged_tolerance: float = 0.0):
    """Replicates within 1e-8 model std; refits that hit their iteration ceiling within ``unconverged_tolerance``.

    The refits start with a damping of 1e-9 in the D0/alpha/D_offset valley, where a
    relative 1e-16 change of the first system moves a converged replicate by up to
    2e-10 model std (measured on the laminar case below by perturbing the refit's own
    system), so 1e-8 leaves room for another CPU or XLA version. (A wrong first system is
    caught by the direct comparison with the brute-force systems above; a refit that
    started from one would mostly still converge to its optimum.) A refit that crawls for
    its 100 iterations amplifies the rounding further; it is excluded from the covariance.
    """
    np.testing.assert_array_equal(shared.blocks, own.blocks)
    np.testing.assert_array_equal(shared.converged, own.converged)
    scale = np.where(result.std > 0, result.std, 1.0)
    difference = np.abs(shared.replicates - own.replicates) / scale
    assert difference[shared.converged].max() <= 1e-8, difference.max(axis=1)
    assert difference[~shared.converged].max(initial=0.0) <= unconverged_tolerance, difference.max(axis=1)
    np.testing.assert_allclose(shared.std, own.std, rtol=1e-8)


@pytest.mark.timeout(300)
def test_shared_first_pass_gives_the_same_replicates_in_fewer_passes_static(tmp_path):
    changes = {"optimization.nlsq.uncertainty": "jackknife", "optimization.nlsq.jackknife_blocks": 10}
    cfg = simulate(tmp_path, "static", STATIC_TRUTH, n_frames=60, **changes)
    data = load_config_dataset(cfg)
    nlsq = build_problem(cfg, data)
    result = fit_nlsq(nlsq, upper_triangle_points(data.c2, nlsq.noise_sigma), SerialComm(), cfg.optimization.nlsq)
    shared, own = jackknife_both_ways(result, nlsq, cfg.optimization.nlsq)
    assert_same_replicates(result, shared, own)
    assert shared.converged.all()
    # measured: 10 first passes replaced by one shared pass (block choice 1 + refits);
    # with plain refit steps (43, 34 with the geodesic acceleration's extra passes); with
    # the Newton finish of the refits (38, 29 when every refit stopped at 0.01 std unfinished)
    assert own.passes - shared.passes == len(shared.blocks) - 1
    assert (own.passes, shared.passes) == (33, 24)


@pytest.mark.timeout(300)
def test_shared_first_pass_on_a_laminar_fit_held_on_a_bound(tmp_path):
    """The hard case: D_offset held on its upper bound, D0/alpha/D_offset strongly correlated."""
    nlsq, result = bounded_fit(tmp_path, "laminar_flow", LAMINAR, 60, {"D_offset": (-100.0, 1.0)})
    assert result.at_bound[result.names.index("D_offset")] == "upper"
    options = load_config(tmp_path / "fit.yaml").optimization.nlsq
    options.jackknife_blocks = 8
    shared, own = jackknife_both_ways(result, nlsq, options)
    assert_same_replicates(result, shared, own, unconverged_tolerance=1e-4)
    assert (~shared.converged).sum() == 1  # measured: frames 35..45 left out, 4e-6 model std apart
    assert own.passes - shared.passes == len(shared.blocks) - 1
    # (307, 300) with accelerated refit steps; (204, 197) before the Newton finish, when refits that
    # do not finish stopped at 0.01 std rather than 0.001
    assert (own.passes, shared.passes) == (206, 199)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
def test_mpi_first_systems_have_the_serial_bits():
    """Each rank holds its own chunks: the shared pass has the bits of the one-rank pass."""
    from homodyne_mpi.nlsq.fit import distribute_points
    from homodyne_mpi.parallel import MPIComm

    comm = MPIComm()
    spec, layout, theta, points = problem("laminar_flow", "paper", "individual")
    theta = np.asarray(theta * 1.01)
    serial = first_systems(objective_of(spec, layout, theta, points, "linear", 64), UNEVEN_BLOCKS, theta)
    local = distribute_points(points if comm.is_root else None, len(points), comm, 64)
    objective = objective_of(spec, layout, theta, local, "linear", 64, comm, n_points=len(points))
    spread = first_systems(objective, UNEVEN_BLOCKS, theta)
    for mine, reference in zip(spread, serial):
        for term, expected in zip(mine, reference):
            assert np.array_equal(term, expected)
