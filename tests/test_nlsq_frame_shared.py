"""The NLSQ fit under frame-shared noise (``noise_model: frame_shared``, ``nlsq/gls.py``).

References are computed here without the code under test: the model and its Jacobian by
automatic differentiation of ``model.c2_points`` (the kernels build theirs from per-frame
tables), and the generalised least-squares terms from an explicit dense covariance.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, write_config

from homodyne_mpi.config import load_config
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.points import PointSet, upper_triangle_points
from homodyne_mpi.data.simulate import simulate_dataset
from homodyne_mpi.errors import ConfigError
from homodyne_mpi.model import c2_points
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty
from homodyne_mpi.nlsq.fit import make_objective
from homodyne_mpi.nlsq.gls import FrameNoiseObjective
from homodyne_mpi.parallel import SerialComm

TRUTH = [8000.0, -0.3, 30.0]


def speckle_config(folder, *, n_frames: int, phi, seed: int, **changes):
    """A static speckle data set (frame terms as large as the point noise) and its config."""
    data = folder / "speckle.h5"
    simulate_dataset(
        data,
        mode="static",
        shear_form="paper",
        gap=2.0e6,
        q=0.0054,
        dt=0.1,
        n_frames=n_frames,
        physical=TRUTH,
        contrast=0.3,
        offset=1.0,
        phi=list(phi),
        noise_sigma=0.01,
        seed=seed,
        noise_model="speckle",
    )
    settings = {
        "analyzer_parameters.dt": 0.1,
        "analyzer_parameters.end_frame": n_frames,
        "experimental_data.file_path": str(data),
        "optimization.nlsq.noise_model": "frame_shared",
        "optimization.nlsq.chunk_size": 256,
        **changes,
    }
    return write_config(folder / "speckle.yaml", "static", **settings)


def problem_and_points(config):
    cfg = load_config(config)
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    return cfg, problem, upper_triangle_points(data.c2, problem.noise_sigma)


def dense_gls(problem, points: PointSet, theta, gamma: float, variance) -> tuple[np.ndarray, np.ndarray, float]:
    """``(J^T S^-1 J, J^T S^-1 r, r^T S^-1 r)`` of the weighted residuals ``r = w (model - value)``
    with ``S`` block-diagonal over the angles, ``variance_a (I + gamma A_a A_a^T)``, built explicitly."""

    def model(vector):
        contrast, offset, physical = problem.layout.split(vector)
        return c2_points(
            physical, contrast, offset, jnp.asarray(problem.phi), points.angle, points.frame_i, points.frame_j, problem.spec
        )

    theta = jnp.asarray(theta, dtype=jnp.float64)
    residual = points.weight * (np.asarray(model(theta)) - points.value)
    jacobian = points.weight[:, None] * np.asarray(jax.jacfwd(model)(theta))
    n, n_frames = len(points.value), problem.spec.n_frames
    incidence = np.zeros((n, n_frames))
    incidence[np.arange(n), points.frame_i] = 1.0
    incidence[np.arange(n), points.frame_j] = 1.0
    same_angle = points.angle[:, None] == points.angle[None, :]
    covariance = np.where(same_angle, np.eye(n) + gamma * incidence @ incidence.T, 0.0)
    covariance *= np.sqrt(np.outer(variance[points.angle], variance[points.angle]))
    solved = np.linalg.solve(covariance, np.column_stack([jacobian, residual]))
    return jacobian.T @ solved[:, :-1], jacobian.T @ solved[:, -1], float(residual @ solved[:, -1])


@pytest.mark.parametrize("pattern", ["full triangle", "points dropped"])
def test_the_distributed_gls_terms_are_those_of_the_dense_covariance(tmp_path, pattern):
    """Per angle a full triangle uses the closed-form frame pattern, one with points dropped the
    counted one; both must give the dense covariance's normal equations and cost."""
    config = speckle_config(tmp_path, n_frames=10, phi=(0.0, 60.0), seed=3, **{"optimization.nlsq.chunk_size": 16})
    cfg, problem, points = problem_and_points(config)
    if pattern == "points dropped":
        keep = np.ones(len(points.value), dtype=bool)
        keep[[3, 17, 50, 71]] = False  # two points of each angle
        fields = ("angle", "frame_i", "frame_j", "value", "weight")
        points = PointSet(**{name: np.asarray(getattr(points, name))[keep] for name in fields})
        problem.n_points = int(keep.sum())
    gls = FrameNoiseObjective(make_objective(problem, points, SerialComm(), cfg.optimization.nlsq))
    theta = problem.theta0 * 1.05
    gls.gamma, gls.variance = 0.7, np.array([1.3, 0.8])
    hessian, gradient, cost, _ = gls(theta)
    complete = [p.complete_frames for p in gls.frame_patterns()]
    assert complete == ([10, 10] if pattern == "full triangle" else [0, 0])
    reference = dense_gls(problem, points, theta, 0.7, np.array([1.3, 0.8]))
    np.testing.assert_allclose(hessian, reference[0], rtol=1e-9, atol=1e-12 * np.abs(reference[0]).max())
    np.testing.assert_allclose(gradient, reference[1], rtol=1e-9, atol=1e-12 * np.abs(reference[1]).max())
    assert cost == pytest.approx(reference[2], rel=1e-10)


def test_where_the_ols_fit_runs_far_along_the_valley_the_gls_fit_stays_near_the_truth(tmp_path):
    """Static speckle data (6 angles, 100 frames, frame terms as large as the point noise, seed 13 of
    ``scripts/study_gls_speckle.py``): ordinary least squares lands at D0 16,300 against a truth of
    8,000, 3.6 of its own std away; the GLS fit must estimate gamma near 1, converge, and put every
    physical parameter within 2 of its std of the truth."""
    phi = (-60.0, -30.0, 0.0, 30.0, 60.0, 90.0)
    config = speckle_config(tmp_path, n_frames=100, phi=phi, seed=13, **{"optimization.nlsq.chunk_size": 8192})
    cfg, problem, points = problem_and_points(config)
    result = fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)
    physical = problem.layout.physical_slice
    ols, ols_std = (np.asarray(result.frame_noise["ols"][key])[physical] for key in ("theta", "std"))
    assert abs(ols[0] - TRUTH[0]) > 3.0 * ols_std[0]  # the case: OLS far along the valley
    assert result.converged, result.reason
    assert 0.8 < result.frame_noise["gamma"] < 1.25
    assert np.all(np.abs(result.theta[physical] - TRUTH) < 2.0 * result.std[physical]), (
        result.theta[physical],
        result.std[physical],
    )
    assert result.jackknife is None  # the GLS covariance is the reported error


@pytest.mark.timeout(600)
def test_the_frame_shared_fit_has_the_same_bits_on_one_two_and_three_ranks(tmp_path):
    config = speckle_config(tmp_path, n_frames=40, phi=(0.0, 45.0, 90.0), seed=8)
    documents = {}
    for ranks in (1, 2, 3):
        out = tmp_path / f"n{ranks}"
        completed = run_cli("run", str(config), "--output-dir", str(out), ranks=ranks, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        documents[ranks] = json.loads((out / "speckle" / "nlsq" / "result.json").read_text())
    first = documents[1]
    assert first["noise_model"] == "frame_shared" and first["uncertainty"] == "model" and first["converged"]
    for ranks in (2, 3):
        document = documents[ranks]
        assert document["chi2"] == first["chi2"] and document["frame_noise"] == first["frame_noise"], ranks
        for name, entry in first["parameters"].items():
            assert document["parameters"][name]["value"] == entry["value"], (ranks, name)
            assert document["parameters"][name]["std"] == entry["std"], (ranks, name)


def test_frame_shared_needs_the_linear_loss_and_method_nlsq(tmp_path):
    config = speckle_config(tmp_path, n_frames=20, phi=(0.0,), seed=1, **{"optimization.nlsq.loss": "soft_l1"})
    with pytest.raises(ConfigError, match="needs loss: linear"):
        load_config(config)
    config = speckle_config(tmp_path, n_frames=20, phi=(0.0,), seed=1, **{"optimization.method": "both"})
    with pytest.raises(ConfigError, match="for method nlsq only"):
        load_config(config)
    config = speckle_config(tmp_path, n_frames=20, phi=(0.0,), seed=1)
    completed = run_cli("run", str(config), "--method", "cmc", "--output-dir", str(tmp_path / "out"))
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if "frame_shared" in line]
    assert len(errors) == 1 and "noise_model: independent" in errors[0] and "Traceback" not in completed.stderr


def summary_document(ratio: float, noise_model: str = "independent") -> dict:
    """A result.json mapping with every physical parameter's jackknife-to-model std ratio ``ratio``."""
    parameters = {
        name: {"value": 1.0, "std": ratio, "std_model": 1.0, "std_ratio_jackknife_to_model": ratio, "fixed": False}
        for name in ("D0", "alpha", "D_offset")
    }
    parameters["offset[0]"] = {"value": 1.0, "std": 9.0, "std_model": 1.0, "std_ratio_jackknife_to_model": 9.0, "fixed": False}
    document = {"parameters": parameters, "noise_model": noise_model, "uncertainty": "jackknife", "converged": True}
    if noise_model == "frame_shared":
        document["frame_noise"] = {"gamma": 0.97}
    return document


@pytest.mark.parametrize(("ratio", "warned"), [(1.1, False), (1.9, False), (4.5, True)])
def test_an_independent_noise_fit_whose_jackknife_says_frame_shared_noise_is_told_so(ratio, warned):
    """Independent noise gives jackknife/model ratios of 1.0 to 1.15, speckle data 2 to 6; the contrast
    and offset ratios (9 here) do not count."""
    from homodyne_mpi.nlsq_summary import log_lines, noise_lines

    lines = noise_lines(summary_document(ratio))
    assert bool(lines) is warned
    if warned:
        assert "4.5 times" in lines[0] and "noise_model: frame_shared" in lines[0]
        assert any(line.startswith("WARNING: the jackknife errors") for line in log_lines(summary_document(ratio)))
    note = noise_lines(summary_document(1.0, "frame_shared"))
    assert len(note) == 1 and "gamma = fs^2/s^2 = 0.97" in note[0] and not note[0].startswith("WARNING")


def test_frame_shared_sums_that_would_not_fit_in_memory_are_refused_before_the_fit(tmp_path, monkeypatch):
    """The per-chunk rows of per-frame sums grow with angles x frames x chunks; above the limit the
    fit is refused with one clear error before any work (here the limit is lowered to 1 kB)."""
    import homodyne_mpi.nlsq.frame_rows as rows_module
    from homodyne_mpi.errors import InputError
    from homodyne_mpi.nlsq import fit_nlsq

    config = speckle_config(tmp_path, n_frames=20, phi=(0.0, 60.0), seed=1)
    cfg, problem, points = problem_and_points(config)
    monkeypatch.setattr(rows_module, "MAX_ROW_BYTES", 1024)
    with pytest.raises(InputError, match=r"GiB of per-frame sums on a rank .*noise_model: independent"):
        fit_nlsq(problem, points, SerialComm(), cfg.optimization.nlsq)
