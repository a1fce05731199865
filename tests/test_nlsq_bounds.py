"""Fits whose optimum lies outside a parameter's box: the bounded step converges there.

Each case simulates data with one physical parameter beyond a bound the config then
sets, fits from the template's start (start search on), and checks that the fit
converges in at most 20 iterations, flags the parameter ``at_bound`` on the right side,
leaves it exactly on the bound, and that the projected gradient is below the tolerance
the run stopped on. Data are small (60-80 frames) to keep the tests fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import template_config

from homodyne_mpi.config import load_config
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.data.simulate import simulate_dataset
from homodyne_mpi.nlsq import build_problem, fit_nlsq
from homodyne_mpi.nlsq.linalg import correlation_matrix
from homodyne_mpi.nlsq_summary import degeneracy, degeneracy_lines
from homodyne_mpi.parallel import SerialComm

STATIC = [8000.0, -0.3, 30.0]
LAMINAR = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
PHI = [-45.0, 0.0, 45.0, 90.0]


def bounded_fit(tmp_path, mode, truth, n_frames, bounds: dict):
    """Simulate ``truth``, set ``bounds`` (name -> (min, max)), fit from the template start."""
    data = tmp_path / "data.h5"
    simulate_dataset(
        data,
        mode=mode,
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=n_frames,
        gap=2.0e6,
        physical=truth,
        contrast=0.3,
        offset=1.0,
        phi=PHI,
        noise_sigma=0.01,
        seed=3,
    )
    config = template_config(
        mode,
        **{"analyzer_parameters.dt": 0.1, "analyzer_parameters.end_frame": n_frames, "experimental_data.file_path": str(data)},
    )
    names = config["initial_parameters"]["parameter_names"]
    for entry in config["parameter_space"]["bounds"]:
        if entry["name"] in bounds:
            entry["min"], entry["max"] = bounds[entry["name"]]
            k = names.index(entry["name"])
            config["initial_parameters"]["values"][k] = float(
                np.clip(config["initial_parameters"]["values"][k], entry["min"], entry["max"])
            )
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = load_config(path)
    dataset = load_config_dataset(cfg)
    problem = build_problem(cfg, dataset)
    return problem, fit_nlsq(problem, upper_triangle_points(dataset.c2, problem.noise_sigma), SerialComm(), cfg.optimization.nlsq)


CASES = [
    ("static", STATIC, 80, {"D_offset": (-100.0, 10.0)}, "D_offset", "upper"),
    ("static", STATIC, 80, {"alpha": (-0.1, 1.0)}, "alpha", "lower"),
    ("laminar_flow", LAMINAR, 60, {"beta": (0.5, 2.0)}, "beta", "lower"),
    ("laminar_flow", LAMINAR, 60, {"D_offset": (-100.0, 1.0)}, "D_offset", "upper"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode, truth, n_frames, bounds, name, side", CASES, ids=[f"{c[0]}-{c[4]}-{c[5]}" for c in CASES])
def test_optimum_beyond_a_bound_converges_there_and_is_flagged(tmp_path, mode, truth, n_frames, bounds, name, side):
    problem, result = bounded_fit(tmp_path, mode, truth, n_frames, bounds)
    k = result.names.index(name)
    assert result.converged, result.reason
    assert result.iterations <= 20, result.reason
    assert result.at_bound[k] == side
    assert result.theta[k] == bounds[name][0 if side == "lower" else 1]
    for j, mark in enumerate(result.at_bound):  # others may follow a correlated parameter to a bound
        if mark:
            assert result.theta[j] == (problem.lower[j] if mark == "lower" else problem.upper[j])
    # The cosine the solver stops on is below gtol, or the stop was on ftol/xtol with it small.
    assert result.projected_gradient <= 1e-4, result.projected_gradient
    # The gradient on the flagged parameter points out of the box (the bound is active).
    gradient = fit_gradient(problem, result)
    assert (gradient[k] > 0) if side == "lower" else (gradient[k] < 0)


def fit_gradient(problem, result):
    """``J^T W r`` at the optimum, recomputed by the objective (independent of the solver's copy)."""

    return result.objective(result.theta)[1]


def test_degeneracy_flags_correlated_pairs_and_poorly_determined_parameters():
    names = ["contrast", "offset", "D0", "alpha", "D_offset"]
    std = np.array([0.01, 0.01, 100.0, 0.05, 800.0])
    corr = np.eye(5)
    corr[2, 4] = corr[4, 2] = -0.995
    corr[2, 3] = corr[3, 2] = 0.9
    covariance = corr * np.outer(std, std)
    correlation = correlation_matrix(covariance)
    np.testing.assert_allclose(correlation, corr, atol=1e-12)
    values = np.array([0.3, 1.0, 2.0e4, -0.3, 500.0])
    found = degeneracy(names, values, std, correlation, ["D0", "alpha", "D_offset"])
    assert found["warning"]
    assert [pair[:2] for pair in found["pairs"]] == [["D0", "D_offset"]]
    assert found["pairs"][0][2] == pytest.approx(-0.995)
    assert found["poorly_determined"] == ["D_offset"]
    calm = degeneracy(names, values * 10, std, np.eye(5), ["D0", "alpha", "D_offset"])
    assert not calm["warning"] and calm["pairs"] == [] and calm["poorly_determined"] == []
    # A pair the reported (jackknife) correlation hides, e.g. one parameter held on a bound,
    # is still reported from the model correlation.
    model = np.eye(5)
    model[3, 4] = model[4, 3] = 0.999
    hidden = degeneracy(names, values * 10, std, np.eye(5), ["D0", "alpha", "D_offset"], model)
    assert hidden["warning"] and [pair[:2] for pair in hidden["pairs"]] == [["alpha", "D_offset"]]


def test_degeneracy_finds_a_combination_of_three_that_no_pair_shows():
    """``D_offset = D0 + alpha + e`` (standardised, ``D0`` and ``alpha`` independent, ``var e = 0.01``): no
    pair reaches ``|corr| = 0.99`` (``1 / sqrt(2.01) = 0.705``), but ``D_offset`` is predicted by the other
    two with multiple correlation ``sqrt(2 / 2.01)`` and the combination ``D0 + alpha - D_offset`` has
    variance 0.01 (closed forms of this construction)."""
    names = ["contrast", "offset", "D0", "alpha", "D_offset"]
    mixing = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.1]])  # rows: D0, alpha, D_offset from (u, v, e)
    physical_cov = mixing @ mixing.T
    covariance = np.eye(5) * 1e-4
    covariance[2:, 2:] = physical_cov
    correlation = correlation_matrix(covariance)
    assert np.max(np.abs(correlation[2:, 2:] - np.eye(3))) == pytest.approx(1 / np.sqrt(2.01))
    values = np.array([0.3, 1.0, 50.0, -20.0, 80.0])
    found = degeneracy(names, values, np.sqrt(np.diag(covariance)), correlation, ["D0", "alpha", "D_offset"])
    assert found["warning"] and found["pairs"] == []
    (group,) = found["groups"]
    assert group["parameters"] == ["D0", "alpha", "D_offset"] and group["source"] == "reported"
    assert group["multiple_correlation"]["D_offset"] == pytest.approx(np.sqrt(2 / 2.01), rel=1e-9)
    # the smallest eigenvalue of the correlation matrix, by the variance of the standardised combination
    weights = np.array([group["weights"][n] for n in ("D0", "alpha", "D_offset")])
    assert group["eigenvalue"] == pytest.approx(weights @ correlation[2:, 2:] @ weights, rel=1e-9)
    assert group["eigenvalue"] < 0.01
    lines = degeneracy_lines({"degeneracy": found})
    assert any(line.startswith("D0, alpha and D_offset are nearly degenerate together") for line in lines)
    # a tenfold larger independent part (var e = 1) leaves the combination determined: no group
    mixing[2, 2] = 1.0
    covariance[2:, 2:] = mixing @ mixing.T
    loose = degeneracy(names, values, np.sqrt(np.diag(covariance)), correlation_matrix(covariance), ["D0", "alpha", "D_offset"])
    assert not loose["warning"] and loose["groups"] == []
    # the model correlation is used where the reported one (a parameter held on a bound) hides the combination
    hidden = degeneracy(names, values, np.ones(5), np.eye(5), ["D0", "alpha", "D_offset"], correlation)
    assert [g["source"] for g in hidden["groups"]] == ["model"]


def test_log_and_report_lines_show_a_bound_and_no_symmetric_error():
    from homodyne_mpi.nlsq_summary import log_lines, parameter_cell

    entry = {"value": 1.0e4, "std": 600.0, "std_model": 500.0, "fixed": False, "at_bound": "upper"}
    cell = parameter_cell(entry)
    assert "upper bound" in cell and "+-" not in cell and "9400" in cell
    doc = {
        "converged": True,
        "iterations": 4,
        "reason": "ftol",
        "reduced_chi2": 1.0,
        "uncertainty": "jackknife",
        "parameters": {
            "D_offset": entry,
            "D0": {"value": 2.0e4, "std": 100.0, "std_model": 50.0, "fixed": False, "at_bound": None},
        },
        "at_bound": {"D_offset": "upper"},
        "degeneracy": {"warning": False, "pairs": [], "poorly_determined": []},
    }
    lines = log_lines(doc)
    assert any(line.strip().startswith("D0") and "20000 +- 100" in line and "[50]" in line for line in lines)
    assert any(line.startswith("WARNING: D_offset is held at its upper bound") for line in lines)
