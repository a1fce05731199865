"""The program against a second, independent route to ``c2`` (``tests/independent_c2.py``).

``independent_c2`` computes ``c2`` from the model's equations with NumPy alone, by
Gauss-Legendre quadrature of the rates on a sub-frame grid instead of the program's
cumulative trapezoid, and writes APS-U files with literal keys. Here:

- the program's ``c2_grid`` equals it to rounding, in both modes and both shear forms,
  with negative exponents (so the ``t_0 = dt/2`` rule matters);
- the program's discretisation approaches the continuous integral it stands for;
- ``homodyne-mpi run`` (1 rank, NLSQ) on noisy files simulated by the independent route
  recovers the truth, for ``static`` and for ``laminar_flow``: every physical parameter
  within 4 reported standard errors and within a stated relative tolerance, contrast and
  offset per angle, and a reduced chi-square near 1. A physics error that the program's
  own simulator would share (and so hide) fails these.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import run_cli, write_config
from independent_c2 import c2_matrices, write_aps_u

from homodyne_mpi.model import ModelSpec, c2_grid

Q = 0.0054  # 1/Angstrom
DT = 0.1  # s
GAP = 2.0e6  # Angstrom
STATIC_TRUTH = [8000.0, -0.3, 30.0]
LAMINAR_TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
PHI = [-60.0, -20.0, 0.0, 30.0, 90.0]
CONTRAST = [0.28, 0.3, 0.32, 0.3, 0.29]
OFFSET = [1.0, 1.002, 0.998, 1.001, 0.999]
NOISE = 0.01


def independent(mode, form, physical, n_frames, convention="frames"):
    return c2_matrices(
        mode=mode,
        shear_form=form,
        q=Q,
        dt=DT,
        n_frames=n_frames,
        gap=GAP,
        physical=physical,
        contrast=CONTRAST,
        offset=OFFSET,
        phi_deg=PHI,
        convention=convention,
    )


def program(mode, form, physical, n_frames):
    spec = ModelSpec(mode, form, q=Q, dt=DT, n_frames=n_frames, gap=GAP)
    return np.asarray(c2_grid(jnp.asarray(physical), jnp.asarray(CONTRAST), jnp.asarray(OFFSET), jnp.asarray(PHI), spec))


@pytest.mark.parametrize("form", ["paper", "homodyne-v2"])
@pytest.mark.parametrize(("mode", "physical"), [("static", STATIC_TRUTH), ("laminar_flow", LAMINAR_TRUTH)])
def test_program_c2_equals_the_independent_route(mode, physical, form):
    # a fast shear (gamma_dot_t0 x 100) so the sinc runs through several lobes over 60 frames
    physical = list(physical)
    if mode == "laminar_flow":
        physical[3] *= 100.0
    expected = independent(mode, form, physical, 60)
    got = program(mode, form, physical, 60)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=0)
    assert np.ptp(expected[:, 0, :]) > 0.05  # the data decorrelate: the comparison is not of constants


def test_rate_floor_acts_on_the_frame_samples():
    """D_offset < 0 makes D(t) negative for t < 0.09 s: those samples sit at the 1e-10 floor
    before the integral is taken, in both routes (an integral floored afterwards differs)."""
    physical = [1000.0, 0.5, -300.0]
    expected = independent("static", "paper", physical, 30)
    np.testing.assert_allclose(program("static", "paper", physical, 30), expected, rtol=1e-11, atol=0)
    assert expected[0, 0, 1] < OFFSET[0] + CONTRAST[0]  # the first interval still decorrelates


@pytest.mark.parametrize(
    ("mode", "physical", "gap", "row"),
    [
        ("static", [1000.0, 0.5, 10.0], 1.0, [1.5, 1.498602370606, 1.49665306242, 1.494139090874]),
        (
            "laminar_flow",
            [1000.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0],
            1e5,
            [1.5, 1.077085450044, 1.000000014153, 1.000926417187, 1.000000013825],
        ),
    ],
)
def test_independent_route_reproduces_the_reference_rows(mode, physical, gap, row):
    """The reference package's rows that ``test_model.py`` holds (``homodyne-v2``, q = 0.01,
    dt = 0.1, contrast 0.5, offset 1, phi = 0), from the NumPy route: a second source for them."""
    got = c2_matrices(
        mode=mode,
        shear_form="homodyne-v2",
        q=0.01,
        dt=0.1,
        n_frames=len(row),
        gap=gap,
        physical=physical,
        contrast=[0.5],
        offset=[1.0],
        phi_deg=[0.0],
    )[0, 0]
    np.testing.assert_allclose(got, row, rtol=1e-9)


def test_discretisation_approaches_the_continuous_integral():
    """Away from t = 0 the frame trapezoid is close to the true integral of D(t) (alpha > 0)."""
    physical = [8000.0, 0.4, 30.0]
    frames = independent("static", "paper", physical, 80, convention="frames")
    continuous = independent("static", "paper", physical, 80, convention="continuous")
    np.testing.assert_allclose(program("static", "paper", physical, 80), frames, rtol=1e-11)
    late = (slice(None), slice(10, None), slice(10, None))
    np.testing.assert_allclose(frames[late], continuous[late], rtol=2e-4)
    # the first interval, where the dt/2 rule acts, differs visibly: the convention matters
    assert abs(frames[0, 0, 1] - continuous[0, 0, 1]) > 1e-5


def fit_with_program(tmp_path, mode, truth, n_frames, seed):
    """Simulate by the independent route, run ``homodyne-mpi run`` on it, return result.json."""
    c2 = independent(mode, "paper", truth, n_frames)
    data = tmp_path / f"independent_{mode}.h5"
    write_aps_u(data, q=Q, phi_deg=PHI, c2=c2, dt=DT, noise_sigma=NOISE, seed=seed)
    config = write_config(
        tmp_path / f"independent_{mode}.yaml",
        mode,
        **{
            "analyzer_parameters.dt": "auto",  # frame_time from the file
            "analyzer_parameters.end_frame": n_frames,
            "analyzer_parameters.scattering.wavevector_q": Q,
            "analyzer_parameters.geometry.stator_rotor_gap": GAP,
            "experimental_data.file_path": str(data),
            "optimization.method": "nlsq",
            "output.plots": False,
        },
    )
    assert yaml.safe_load(config.read_text())["shear_form"] == "paper"
    out = tmp_path / "results"
    result = run_cli("run", str(config), "--output-dir", str(out), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / data.stem / "nlsq" / "result.json").read_text())


def assert_recovered(doc, names, truth, rtol):
    """Each value within 4 reported standard errors of the truth and, where ``rtol`` names it,
    within that relative tolerance (given for the well-determined parameters only: at this
    noise D_offset and gamma_dot_t_offset have standard errors larger than their values)."""
    parameters = doc["parameters"]
    for name, value in zip(names, truth):
        fitted, std = parameters[name]["value"], parameters[name]["std"]
        assert 0 < std and abs(fitted - value) < 4.0 * std, f"{name}: {fitted:.6g} +- {std:.3g}, truth {value:g}"
        if name in rtol:
            assert abs(fitted - value) <= rtol[name] * abs(value), f"{name}: {fitted:.6g}, truth {value:g}, rtol {rtol[name]}"


def assert_scaling_recovered(doc):
    for a in range(len(PHI)):
        assert_recovered(
            doc, [f"contrast[{a}]", f"offset[{a}]"], [CONTRAST[a], OFFSET[a]], {f"contrast[{a}]": 0.02, f"offset[{a}]": 0.002}
        )


@pytest.mark.timeout(300)
def test_nlsq_recovers_static_truth_from_independently_simulated_data(tmp_path):
    doc = fit_with_program(tmp_path, "static", STATIC_TRUTH, n_frames=120, seed=11)
    assert doc["converged"] is True
    assert 0.95 < doc["reduced_chi2"] < 1.05
    # measured with seed 11: D0 0.7% off (0.3 sigma), alpha 0.9% (0.3 sigma)
    assert_recovered(doc, ["D0", "alpha", "D_offset"], STATIC_TRUTH, {"D0": 0.05, "alpha": 0.05})
    assert_scaling_recovered(doc)


@pytest.mark.timeout(300)
def test_nlsq_recovers_laminar_truth_from_independently_simulated_data(tmp_path):
    doc = fit_with_program(tmp_path, "laminar_flow", LAMINAR_TRUTH, n_frames=150, seed=12)
    assert doc["converged"] is True
    assert 0.95 < doc["reduced_chi2"] < 1.05
    names = ["D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"]
    # measured with seed 12: D0 1.2% off, alpha 2.9%, gamma_dot_t0 21% (1.4 sigma), beta 13%
    # (1.6 sigma), phi0 2% (1.7 sigma); the sign errors this guards against give far more
    rtol = {"D0": 0.05, "alpha": 0.08, "gamma_dot_t0": 0.4, "beta": 0.4, "phi0": 0.05}
    assert_recovered(doc, names, LAMINAR_TRUTH, rtol)
    assert_scaling_recovered(doc)
