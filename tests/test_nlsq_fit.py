"""NLSQ fits of simulated data: the truth is recovered within the reported errors.

The fits start from the ``init-config`` template's defaults, as a user's first run would.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_config

from homodyne_mpi.config import load_config
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.data.simulate import simulate_dataset
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty
from homodyne_mpi.parallel import SerialComm

LAMINAR_TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
STATIC_TRUTH = [8000.0, -0.3, 30.0]
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
CONTRAST = [0.28, 0.3, 0.32, 0.3, 0.29, 0.31]
OFFSET = [1.0, 1.002, 0.998, 1.001, 0.999, 1.0]


def simulate(tmp_path, mode, truth, n_frames, noise=0.01, seed=5, phi=PHI, **config_changes):
    """Simulated file plus a template config (template start values) pointing at it."""
    data = tmp_path / f"{mode}.h5"
    simulate_dataset(
        data,
        mode=mode,
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=n_frames,
        gap=2.0e6,
        physical=truth,
        contrast=CONTRAST[: len(phi)],
        offset=OFFSET[: len(phi)],
        phi=phi,
        noise_sigma=noise,
        seed=seed,
    )
    config = write_config(
        tmp_path / f"{mode}.yaml",
        mode,
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": n_frames,
            "experimental_data.file_path": str(data),
            **config_changes,
        },
    )
    return load_config(config)


def fit(cfg):
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    return problem, fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)


def assert_truth_within(result, names, truth, n_std=3.0):
    for name, value in zip(names, truth):
        k = result.names.index(name)
        deviation = abs(result.theta[k] - value) / result.std[k]
        assert deviation < n_std, f"{name}: {result.theta[k]:.6g} +- {result.std[k]:.3g}, truth {value:g}"


@pytest.mark.timeout(300)
def test_laminar_fit_from_template_defaults_recovers_truth(tmp_path):
    cfg = simulate(tmp_path, "laminar_flow", LAMINAR_TRUTH, n_frames=300)
    problem, result = fit(cfg)
    assert result.converged, result.reason
    physical = ["D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"]
    assert_truth_within(result, physical, LAMINAR_TRUTH)
    assert_truth_within(result, [f"contrast[{a}]" for a in range(6)], CONTRAST)
    assert_truth_within(result, [f"offset[{a}]" for a in range(6)], OFFSET)
    assert 0.9 < result.reduced_chi2 < 1.1


@pytest.mark.timeout(300)
def test_static_fit_from_template_defaults_recovers_truth(tmp_path):
    cfg = simulate(tmp_path, "static", STATIC_TRUTH, n_frames=300)
    problem, result = fit(cfg)
    assert result.converged, result.reason
    assert_truth_within(result, ["D0", "alpha", "D_offset"], STATIC_TRUTH)
    assert 0.9 < result.reduced_chi2 < 1.1


@pytest.mark.timeout(300)
def test_averaged_scaling_and_fixed_parameter(tmp_path):
    cfg = simulate(
        tmp_path,
        "static",
        STATIC_TRUTH,
        n_frames=120,
        **{
            "initial_parameters.per_angle_scaling.mode": "averaged",
            "initial_parameters.values": [1000.0, -0.3, 0.0],
            "initial_parameters.fixed_parameters": ["alpha"],
        },
    )
    problem, result = fit(cfg)
    assert result.names[:2] == ["contrast", "offset"]
    assert result.theta[result.names.index("alpha")] == -0.3
    assert result.std[result.names.index("alpha")] == 0.0
    assert result.converged, result.reason


@pytest.mark.timeout(600)
def test_million_points_moves_every_free_parameter_and_converges(tmp_path):
    n_frames = 578  # 6 angles x 578*577/2 = 1,000,506 points
    cfg = simulate(tmp_path, "laminar_flow", LAMINAR_TRUTH, n_frames=n_frames, noise=0.02)
    problem, result = fit(cfg)
    assert result.n_points > 1_000_000
    assert result.converged, result.reason
    assert result.iterations > 0
    moved = np.abs(result.theta - problem.theta0) > 1e-6 * np.maximum(np.abs(problem.theta0), 1e-12)
    assert np.all(moved[problem.free]), [n for n, m in zip(result.names, moved) if not m]
    assert_truth_within(result, ["D0", "alpha", "gamma_dot_t0", "phi0"], [LAMINAR_TRUTH[k] for k in (0, 1, 3, 6)], n_std=4)


@pytest.mark.timeout(300)
def test_max_iterations_reported_as_not_converged(tmp_path):
    cfg = simulate(
        tmp_path,
        "static",
        STATIC_TRUTH,
        n_frames=80,
        **{"optimization.nlsq.max_iterations": 1, "optimization.nlsq.start_search": False},
    )
    _, result = fit(cfg)
    assert not result.converged
    assert "max_iterations" in result.reason


@pytest.mark.timeout(300)
def test_soft_l1_resists_outliers(tmp_path):
    cfg = simulate(tmp_path, "static", STATIC_TRUTH, n_frames=100, **{"optimization.nlsq.loss": "soft_l1"})
    data = load_config_dataset(cfg)
    rng = np.random.default_rng(0)
    spoiled = data.c2.copy()
    rows = rng.integers(0, 100, 60)
    cols = rng.integers(0, 100, 60)
    spoiled[:, rows, cols] += 0.5
    spoiled[:, cols, rows] += 0.5
    data.c2 = spoiled
    robust_problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, robust_problem.noise_sigma)
    robust = fit_with_uncertainty(robust_problem, points, SerialComm(), cfg.optimization.nlsq)
    cfg.optimization.nlsq.loss = "linear"
    plain = fit_with_uncertainty(robust_problem, points, SerialComm(), cfg.optimization.nlsq)
    k = robust.names.index("D0")
    assert abs(robust.theta[k] - STATIC_TRUTH[0]) < abs(plain.theta[k] - STATIC_TRUTH[0])


@pytest.mark.parametrize("n_points, n_chunks", [(3000, 3), (3000, 5), (1024, 1), (0, 2)])
def test_chunk_edge_angles_read_from_the_host_equal_the_device_blocks_first_and_last_columns(n_points, n_chunks):
    """The pair span is taken from the host columns: they must match the padded device block."""
    from homodyne_mpi.data.points import PointSet
    from homodyne_mpi.nlsq.fit import chunk_edge_angles, device_block

    rng = np.random.default_rng(n_points + n_chunks)
    frame_i = rng.integers(0, 50, n_points).astype(np.int32)
    points = PointSet(
        angle=np.sort(rng.integers(0, 10 * n_points + 1, n_points)).astype(np.int32),  # mostly distinct
        frame_i=frame_i,
        frame_j=(frame_i + 1).astype(np.int32),
        value=rng.random(n_points),
        weight=np.ones(n_points),
    )
    angles = np.asarray(device_block(points, 1024, n_chunks)[0])
    np.testing.assert_array_equal(chunk_edge_angles(points, 1024, n_chunks), angles[:, [0, -1]])


def test_distributed_block_is_whole_chunks_and_the_device_block_shares_its_memory():
    """A rank holds its points once: the padded receive buffer is the device block's memory."""
    from homodyne_mpi.data.points import PointSet
    from homodyne_mpi.nlsq.fit import device_block, distribute_points
    from homodyne_mpi.parallel import SerialComm
    from homodyne_mpi.parallel.chunk_order import chunk_layout

    rng = np.random.default_rng(0)
    n = 3000
    frame_i = rng.integers(0, 50, n).astype(np.int32)
    points = PointSet(
        angle=np.sort(rng.integers(0, 3, n)).astype(np.int32),
        frame_i=frame_i,
        frame_j=(frame_i + 1).astype(np.int32),
        value=rng.random(n),
        weight=np.full(n, 100.0),
    )
    local = distribute_points(points, n, SerialComm(), chunk_size=1024)
    assert len(local) == chunk_layout(n, 1024, 1).capacity_of(0) == 3072
    np.testing.assert_array_equal(local.value[:n], points.value)
    assert np.all(local.weight[n:] == 0.0) and np.all(local.angle[n:] == points.angle[-1])
    assert np.all(local.frame_i[n:] < local.frame_j[n:])
    block = device_block(local, 1024)
    names = PointSet.column_names()
    for name, column in zip(names, block):
        assert column.shape == (3, 1024)
        assert column.unsafe_buffer_pointer() == getattr(local, name).ctypes.data, name


def test_a_fit_that_runs_out_of_iterations_in_a_flat_valley_says_it_was_crawling(tmp_path):
    """Laminar flow with frame-shared (speckle) noise, seed 13: the least-squares optimum lies at the
    end of the valley where ``beta -> 0`` and ``gamma_dot_t0 + gamma_dot_t_offset`` is all the data
    fix (it takes over 300 iterations to reach it, each lowering chi2 by under 0.25). Stopped after 60
    iterations, the reason says how little chi2 still fell and calls it a crawl; a well-posed static
    fit stopped after 2 iterations from the template start (no start search) does not."""
    from homodyne_mpi.data.simulate import simulate_dataset

    data = tmp_path / "speckle.h5"
    simulate_dataset(
        data, mode="laminar_flow", shear_form="paper", q=0.0054, dt=0.1, n_frames=100, gap=2e6, physical=LAMINAR_TRUTH,
        contrast=0.3, offset=1.0, phi=PHI, noise_sigma=0.01, seed=13, noise_model="speckle",
    )  # fmt: skip
    changes = {"analyzer_parameters.dt": 0.1, "analyzer_parameters.end_frame": 100, "experimental_data.file_path": str(data)}
    changes.update({"optimization.nlsq.uncertainty": "model", "optimization.nlsq.max_iterations": 60})
    _, crawling = fit(load_config(write_config(tmp_path / "speckle.yaml", "laminar_flow", **changes)))
    assert not crawling.converged
    assert crawling.reason.startswith("reached max_iterations=60; chi2 fell by ")
    assert "slow crawl along a flat valley" in crawling.reason
    _, early = fit(
        simulate(
            tmp_path,
            "static",
            STATIC_TRUTH,
            n_frames=60,
            **{
                "optimization.nlsq.uncertainty": "model",
                "optimization.nlsq.max_iterations": 3,
                "optimization.nlsq.start_search": False,
            },
        )
    )
    assert not early.converged and "chi2 fell by" in early.reason and "crawl" not in early.reason
