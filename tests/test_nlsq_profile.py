"""The profile check: against closed forms (a linear model, whose chi2 is quadratic and whose
half-widths are exactly 1; a saturating one whose chi2 cannot rise by 1 on one side), and on
simulated fits (a flat D0/D_offset valley is reported, a well-posed fit is not)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import template_config

from homodyne_mpi.config import load_config
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.data.simulate import simulate_dataset
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty
from homodyne_mpi.nlsq.linalg import covariance_from_hessian
from homodyne_mpi.nlsq.profile import ProfileSide, half_width, profile_check, valley_ends
from homodyne_mpi.nlsq.results import result_document
from homodyne_mpi.nlsq.solver import LMOptions, levenberg_marquardt
from homodyne_mpi.nlsq_summary import log_lines
from homodyne_mpi.parallel import SerialComm


def least_squares(residual_and_jacobian):
    """An objective of the solver's form: ``(J^T J, J^T r, chi2, cost)``."""

    def evaluate(theta):
        r, jac = residual_and_jacobian(np.asarray(theta, dtype=float))
        chi2 = float(r @ r)
        return jac.T @ jac, jac.T @ r, chi2, chi2

    return evaluate


def fitted(evaluate, theta0, lower, upper):
    """The optimum as ``profile_check`` needs it (result and problem with two physical parameters)."""
    free = np.ones(len(theta0), dtype=bool)
    lm = levenberg_marquardt(evaluate, np.asarray(theta0, float), lower, upper, free, LMOptions(), quiet=True)
    assert lm.converged
    n_points = 40
    reduced = lm.chi2 / (n_points - 2)
    problem = SimpleNamespace(free=free, lower=lower, upper=upper, layout=SimpleNamespace(physical_slice=slice(0, len(theta0))))
    result = SimpleNamespace(
        theta=lm.theta,
        covariance=covariance_from_hessian(lm.hessian, free, reduced),
        chi2=lm.chi2,
        reduced_chi2=reduced,
        at_bound=[None] * len(theta0),
        names=["a", "b"],
        iterations=lm.iterations,
        objective=evaluate,
    )
    return result, problem


def test_a_quadratic_chi2_has_half_width_one_on_both_sides():
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 2.0, 40)  # not centred: a and b are correlated
    y = 1.5 - 0.7 * x + 0.1 * rng.standard_normal(40)
    jac = np.stack([np.ones_like(x), x], axis=1)
    evaluate = least_squares(lambda th: (th[0] + th[1] * x - y, jac))
    result, problem = fitted(evaluate, [0.0, 0.0], np.full(2, -10.0), np.full(2, 10.0))
    profiles = profile_check(result, problem, LMOptions())
    for name in ("a", "b"):
        for side in profiles[name]:
            assert side.reached and side.converged
            assert side.rises == [pytest.approx(9.0, rel=1e-6)]
            assert side.half_width == pytest.approx(1.0, rel=1e-6)


def test_a_saturating_model_is_unbounded_on_one_side_and_close_to_its_closed_form_on_the_other():
    # r_i = tanh(a) + b x_i - y_i with sum(x) = 0: the profile of a is n (tanh a - mean y)^2 / s^2,
    # which can rise by at most n (1 - mean y)^2 / s^2 < 1 towards a -> +inf.
    n, y_mean = 40, 0.98
    x = np.linspace(-1.0, 1.0, n)
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(n)
    noise -= noise.mean() + (noise @ x) / (x @ x) * x  # mean 0 and orthogonal to x: the optimum is exact
    y = y_mean + 0.3 * x + 0.2 * noise

    def residual(th):
        t = math.tanh(th[0])
        return t + th[1] * x - y, np.stack([np.full(n, 1 - t * t), x], axis=1)

    result, problem = fitted(least_squares(residual), [1.0, 0.0], np.array([-10.0, -10.0]), np.array([10.0, 10.0]))
    scale = math.sqrt(result.reduced_chi2)
    assert n * (1 - y_mean) ** 2 / scale**2 < 1.0  # the + side cannot reach a rise of 1
    lower, upper = profile_check(result, problem, LMOptions())["a"]
    assert not upper.reached and upper.half_width > 2.0
    a_hat, std = result.theta[0], math.sqrt(result.covariance[0, 0])
    exact_rises = [n * (math.tanh(a_hat + k * std) - y_mean) ** 2 / scale**2 for k in upper.offsets]
    assert upper.rises == pytest.approx(exact_rises, rel=1e-6)
    exact = (math.atanh(y_mean) - math.atanh(y_mean - scale / math.sqrt(n))) / std
    assert lower.reached and lower.half_width == pytest.approx(exact, rel=0.25)


def test_half_width_interpolates_the_root_of_the_rise():
    assert half_width([3.0], [9.0]) == (1.0, True)
    assert half_width([-3.0, -6.0], [0.25, 4.0]) == (pytest.approx(3.0 + 0.5 * 3.0 / 1.5), True)
    assert half_width([3.0, 6.0], [0.1, 0.5]) == (6.0, False)


def fitted_document(tmp_path, truth, phi, n_frames, seed):
    """Simulate a static data set, fit it (model std, profile check on) and return result.json's mapping."""
    data = tmp_path / "data.h5"
    simulate_dataset(
        data,
        mode="static",
        shear_form="paper",
        q=0.006,
        dt=0.1,
        n_frames=n_frames,
        gap=2.0e6,
        physical=truth,
        contrast=np.linspace(0.28, 0.32, len(phi)),
        offset=np.linspace(1.0, 1.02, len(phi)),
        phi=phi,
        noise_sigma=0.01,
        seed=seed,
    )
    config = template_config(
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": n_frames,
            "analyzer_parameters.scattering.wavevector_q": 0.006,
            "experimental_data.file_path": str(data),
            "phi_filtering.enabled": False,
            "optimization.nlsq.uncertainty": "model",
            "optimization.nlsq.profile_check": True,
        },
    )
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = load_config(path)
    dataset = load_config_dataset(cfg)
    problem = build_problem(cfg, dataset)
    points = upper_triangle_points(dataset.c2, problem.noise_sigma)
    result = fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)
    assert result.converged and result.objective is None
    return result_document(result, problem, cfg, dataset, dataset="d", timing_s={})


@pytest.mark.timeout(300)
def test_a_flat_valley_is_reported_and_a_well_posed_fit_is_not(tmp_path):
    # alpha near 0: D0 and D_offset trade along a flat, curved valley (the hard CMC case
    # static_degenerate, seed 0, where D0 = 160 +- 123 against a truth of 1000).
    flat = fitted_document(tmp_path / "flat", [1000.0, -0.05, 200.0], [0.0, 60.0, 120.0], 70, seed=0)
    wide = {name for name, *_ in flat["degeneracy"]["wide_profile"]}
    assert {"D0", "D_offset"} <= wide and flat["degeneracy"]["warning"]
    d0 = flat["parameters"]["D0"]
    assert not d0["profile"]["plus"]["reached"] and d0["profile"]["plus"]["value"] > 1000.0
    assert any("the data do not bound D0" in line for line in log_lines(flat))
    # A well-posed static fit: quadratic-looking profiles, nothing flagged.
    calm = fitted_document(tmp_path / "calm", [8000.0, -0.3, 30.0], [-45.0, 0.0, 45.0, 90.0], 80, seed=3)
    assert calm["degeneracy"]["wide_profile"] == []
    for name in ("D0", "alpha", "D_offset"):
        for side in calm["parameters"][name]["profile"].values():
            assert side["reached"] and 0.5 < side["half_width"] < 2.0, (name, side)


def test_valley_ends_are_the_far_probes_of_the_wide_sides_farthest_first_and_interleaved():
    def side(offsets, half_width):
        return ProfileSide(
            offsets=offsets,
            rises=[0.0] * len(offsets),
            half_width=half_width,
            reached=False,
            converged=True,
            thetas=[np.full(2, o) for o in offsets],
        )

    profiles = {
        "D0": (side([-0.5], 0.5), side([3.0, 6.0, 12.0], 12.0)),  # narrow below (a bound), wide above
        "D_offset": (side([-3.0, -6.0], 6.0), side([3.0], 1.0)),
    }
    ends = valley_ends(profiles)
    assert [(name, label, theta[0]) for name, label, theta in ends] == [
        ("D0", "plus", 12.0),
        ("D_offset", "minus", -6.0),
        ("D0", "plus", 6.0),
        ("D_offset", "minus", -3.0),
        ("D0", "plus", 3.0),
    ]
    assert valley_ends({"alpha": (side([-3.0], 1.0), side([3.0], 1.0))}) == []
