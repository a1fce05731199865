"""End-to-end CMC on one process (SerialComm) with data made directly from the model.

The warm start is the exact weighted least-squares optimum (Gauss-Newton from the truth)
with its covariance, i.e. what NLSQ returns, so these tests do not depend on the NLSQ
code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homodyne_mpi.config import DEFAULT_BOUNDS, HomodyneConfig
from homodyne_mpi.data.points import PointSet
from homodyne_mpi.errors import FitError, Interrupted
from homodyne_mpi.model import ModelSpec, ParameterLayout, c2_points
from homodyne_mpi.nlsq.fit import NLSQProblem, NLSQResult
from homodyne_mpi.parallel import SerialComm

STATIC_TRUTH = {"D0": 2.0e3, "alpha": -0.5, "D_offset": 5.0e2}
LAMINAR_TRUTH = {
    "D0": 2.0e3,
    "alpha": -0.5,
    "D_offset": 5.0e2,
    "gamma_dot_t0": 8.0e-4,
    "beta": -0.5,
    "gamma_dot_t_offset": 3.0e-4,
    "phi0": 5.0,
}


@dataclass
class Simulated:
    cfg: HomodyneConfig
    problem: NLSQProblem
    points: PointSet
    truth: np.ndarray
    warm_start: NLSQResult


def make_config(mode: str, cmc: dict | None = None, scaling: str = "individual") -> HomodyneConfig:
    return HomodyneConfig.from_dict(
        {
            "analysis_mode": mode,
            "analyzer_parameters": {"dt": 0.1, "scattering": {"wavevector_q": 0.01}, "geometry": {"stator_rotor_gap": 2.0e5}},
            "initial_parameters": {"per_angle_scaling": {"mode": scaling}},
            "optimization": {"method": "cmc", "cmc": cmc or {}},
        }
    )


def simulate(mode="static", *, n_frames=60, phi=(0.0, 60.0), noise=0.003, seed=0, cmc=None, scaling="individual") -> Simulated:
    """Points of ``c2`` from the model plus Gaussian noise, and an exact NLSQ warm start."""
    cfg = make_config(mode, cmc, scaling)
    truth_physical = STATIC_TRUTH if mode == "static" else LAMINAR_TRUTH
    spec = ModelSpec(mode, "paper", 0.01, 0.1, n_frames, gap=2.0e5)
    n_angles = len(phi)
    layout = ParameterLayout(mode, n_angles, scaling)
    phi = np.asarray(phi, dtype=float)
    contrast = np.linspace(0.30, 0.36, n_angles) if scaling == "individual" else np.full(n_angles, 0.33)
    offset = np.linspace(1.00, 1.02, n_angles) if scaling == "individual" else np.full(n_angles, 1.01)
    truth = layout.join(contrast, offset, [truth_physical[n] for n in spec.physical_names])
    rows, cols = np.triu_indices(n_frames, k=1)
    angle = np.repeat(np.arange(n_angles, dtype=np.int32), rows.size)
    frame_i = np.tile(rows.astype(np.int32), n_angles)
    frame_j = np.tile(cols.astype(np.int32), n_angles)

    def model(theta):
        c, o, p = layout.split(theta)
        return c2_points(p, c, o, jnp.asarray(phi), angle, frame_i, frame_j, spec)

    exact = np.asarray(model(jnp.asarray(truth)))
    value = exact + noise * np.random.default_rng(seed).standard_normal(exact.size)
    points = PointSet(angle, frame_i, frame_j, value, np.full(exact.size, 1.0 / noise))
    names = layout.names
    lower = np.array([DEFAULT_BOUNDS[n.split("[")[0]][0] for n in names])
    upper = np.array([DEFAULT_BOUNDS[n.split("[")[0]][1] for n in names])
    problem = NLSQProblem(
        spec=spec,
        layout=layout,
        phi=phi,
        theta0=truth.copy(),
        lower=lower,
        upper=upper,
        free=np.ones(len(names), dtype=bool),
        n_points=len(points),
        noise_sigma=np.full(n_angles, noise),
    )
    residual = jax.jit(lambda theta: (jnp.asarray(value) - model(theta)) / noise)
    jacobian = jax.jit(jax.jacfwd(residual))
    theta = np.asarray(truth, dtype=float)
    chi2 = float(np.sum(np.asarray(residual(theta)) ** 2))
    damping = 1e-3
    for _ in range(30):  # Levenberg-Marquardt from the truth, in unit-scaled columns
        J, r = np.asarray(jacobian(theta)), np.asarray(residual(theta))
        unit = 1.0 / np.linalg.norm(J, axis=0)
        hessian = (J * unit).T @ (J * unit)
        step = unit * np.linalg.solve(hessian + damping * np.eye(len(unit)), (J * unit).T @ r)
        trial = theta + step
        trial_chi2 = float(np.sum(np.asarray(residual(trial)) ** 2))
        if trial_chi2 < chi2:
            converged = chi2 - trial_chi2 < 1e-10 * chi2
            theta, chi2, damping = trial, trial_chi2, damping / 10
            if converged:
                break
        else:
            damping *= 10
    J = np.asarray(jacobian(theta))
    unit = 1.0 / np.linalg.norm(J, axis=0)
    covariance = unit[:, None] * np.linalg.inv((J * unit).T @ (J * unit)) * unit[None, :]
    warm = NLSQResult(
        names=names,
        theta=np.asarray(theta),
        covariance=covariance,
        converged=True,
        reason="test",
        iterations=30,
        chi2=chi2,
        n_points=len(points),
        n_free=len(names),
        n_ranks=1,
        history=[],
    )
    return Simulated(cfg, problem, points, truth, warm)


FAST_MCMC = {"num_warmup": 150, "num_samples": 150, "num_chains": 2, "min_warmup": 50, "min_samples": 50}
LENIENT = {"max_rhat": 1.3, "max_divergence_rate": 0.3}
"""Short chains on small shards: these tests check the bookkeeping, not convergence."""


def run(sim: Simulated, comm=None, **kwargs):
    from homodyne_mpi.cmc import run_cmc

    return run_cmc(sim.cfg, sim.problem, sim.points, comm or SerialComm(), warm_start=sim.warm_start, **kwargs)


def check_recovers_truth(result, sim: Simulated, max_rhat: float = 1.05):
    names = sim.problem.names
    params = result.to_json_dict()["parameters"]
    for k, name in enumerate(names):
        mean, std = params[name]["mean"], params[name]["std"]
        assert abs(mean - sim.truth[k]) < 3 * std, f"{name}: {mean} +- {std}, truth {sim.truth[k]}"
    retained = [s for s in result.shards if result.status[s.index] is None]
    assert [s.index for s in retained] == result.used
    assert len(retained) >= len(result.shards) // 2
    assert max(s.rhat_max for s in retained) < max_rhat


def test_static_default_settings_recover_the_truth(tmp_path):
    sim = simulate("static", n_frames=80, cmc={"sharding": {"num_shards": 4}})
    result = run(sim, output_dir=tmp_path)
    assert len(result.shards) == 4
    check_recovers_truth(result, sim)
    doc = result.to_json_dict()
    assert doc["method"] == "cmc" and doc["n_ranks"] == 1
    assert doc["combination"]["method"] == "barycenter"
    assert doc["priors"]["likelihood_power"] == 4 and doc["priors"]["tempering_power"] == 1.0
    assert set(doc["parameters"]) == {*sim.problem.names, "sigma"}
    assert doc["parameters"]["sigma"]["mean"] == pytest.approx(0.003, rel=0.05)
    assert doc["sampler"]["num_chains"] == 4 and doc["sampler"]["chain_method"] == "parallel"
    for shard in doc["shards"]:
        assert {"index", "n_points", "rank", "rhat_max", "ess_min", "divergences", "ok", "error"} <= set(shard)
    json.dumps(doc)  # JSON-ready
    arrays = result.posterior_arrays()
    assert arrays["draws"].shape[1] == len(sim.problem.names) + 1
    assert [n.decode() for n in arrays["names"]] == [*sim.problem.names, "sigma"]
    assert arrays["shards/mean"].shape[0] == len(result.used)
    assert len(list((tmp_path / "cmc" / "shards").glob("shard_*.npz"))) == 4


@pytest.mark.slow
def test_laminar_flow_default_settings_recover_the_truth():
    sim = simulate("laminar_flow", n_frames=100, phi=(-30.0, 30.0, 75.0), cmc={"sharding": {"num_shards": 8}})
    result = run(sim)
    assert len(result.shards) == 8
    check_recovers_truth(result, sim)


def test_a_failing_shard_is_recorded_and_the_rest_combined(monkeypatch, tmp_path):
    import homodyne_mpi.cmc.worker as runner

    original = runner.sample_shard

    def flaky(worker, index, data, *settings):
        if index == 2:
            raise RuntimeError("injected failure in shard 2")
        return original(worker, index, data, *settings)

    monkeypatch.setattr(runner, "sample_shard", flaky)
    sim = simulate(
        "static",
        n_frames=80,
        cmc={"sharding": {"num_shards": 5}, "per_shard_mcmc": FAST_MCMC, "combination": {**LENIENT, "min_success_rate": 0.8}},
    )
    result = run(sim, output_dir=tmp_path)
    doc = result.to_json_dict()
    failed = [s for s in doc["shards"] if s["index"] == 2][0]
    assert failed["ok"] is False and "injected failure" in failed["error"]
    assert "RuntimeError" in failed["traceback"] and failed["rank"] == 0
    assert doc["combination"]["failed"][0]["index"] == 2
    assert 2 not in result.used and len(result.used) >= 3
    assert not (tmp_path / "cmc" / "shards" / "shard_00002.npz").exists()
    # with a stricter success rate the same failure is an error naming the shard
    strict = simulate(
        "static",
        n_frames=80,
        cmc={"sharding": {"num_shards": 5}, "per_shard_mcmc": FAST_MCMC, "combination": {**LENIENT, "min_success_rate": 1.0}},
    )
    with pytest.raises(FitError, match="shard 2 failed"):
        run(strict, output_dir=tmp_path / "strict")
    record = json.loads((tmp_path / "strict" / "cmc" / "result.json").read_text())
    assert record["status"] == "failed" and "only 4 of 5 shards are good" in record["reason"]
    assert [s["index"] for s in record["shards"]] == [0, 1, 2, 3, 4]
    assert any(s["index"] == 2 and "injected" in s["error"] and not s["ok"] for s in record["shards"])
    assert all(s["rhat_max"] is not None and s["divergence_rate"] is not None for s in record["shards"] if s["index"] != 2)
    assert doc["status"] == "partial" and "shard 2 failed" in doc["reason"]


def test_an_unconverged_or_non_finite_warm_start_is_refused_in_one_line():
    from types import SimpleNamespace

    from homodyne_mpi.cmc.calibration import check_warm_start, uncalibrated_warning
    from homodyne_mpi.errors import InputError

    check_warm_start(None)
    check_warm_start(SimpleNamespace(theta=np.ones(3), converged=True, reason="xtol", iterations=7))
    with pytest.raises(InputError, match="did not converge") as refused:
        check_warm_start(SimpleNamespace(theta=np.ones(3), converged=False, reason="max_iterations", iterations=100))
    assert "\n" not in str(refused.value) and "max_iterations" in str(refused.value)
    with pytest.raises(InputError, match="non-finite"):
        check_warm_start(SimpleNamespace(theta=np.array([1.0, np.nan]), converged=True, reason="", iterations=1))
    # no jackknife while calibration is on: a warning that says what to do; none when off
    assert "NOT calibrated" in uncalibrated_warning(True, SimpleNamespace(jackknife=None))
    assert "no NLSQ fit" in uncalibrated_warning(True, None)
    assert uncalibrated_warning(False, None) is None
    assert uncalibrated_warning(True, SimpleNamespace(jackknife=object())) is None


def test_interrupted_run_resumes_from_finished_shards(monkeypatch, tmp_path):
    import homodyne_mpi.cmc.worker as runner

    cmc = {"sharding": {"num_shards": 4}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    sim = simulate("static", n_frames=80, cmc=cmc)
    reference = run(sim, output_dir=tmp_path / "reference")

    original = runner.sample_shard
    calls = []

    def interrupt_third(worker, index, data, *settings):
        calls.append(index)
        if len(set(calls)) == 3:  # the third shard (a retry is not a new shard)
            raise Interrupted("test interrupt")
        return original(worker, index, data, *settings)

    monkeypatch.setattr(runner, "sample_shard", interrupt_third)
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        run(sim, output_dir=out)
    saved = sorted(p.name for p in (out / "cmc" / "shards").glob("shard_*.npz"))
    assert len(saved) == 2
    monkeypatch.setattr(runner, "sample_shard", original)
    resumed = run(sim, output_dir=out)
    reused = sorted(s.index for s in resumed.shards if s.reused)
    assert [f"shard_{k:05d}.npz" for k in reused] == saved
    assert resumed.dispatch["shards_reused"] == 2 and resumed.dispatch["shards_run"] == 2
    np.testing.assert_array_equal(resumed.draws, reference.draws)
    # a changed config does not reuse the stale shards
    changed = simulate("static", n_frames=80, cmc={**cmc, "seed": 7})
    again = run(changed, output_dir=out)
    assert not any(s.reused for s in again.shards)


def test_gaussian_product_and_config_priors_without_warm_start():
    sim = simulate(
        "static",
        n_frames=80,
        cmc={
            "sharding": {"num_shards": 3},
            "per_shard_mcmc": FAST_MCMC,
            "combination": {**LENIENT, "method": "gaussian_product"},
        },
        scaling="averaged",
    )
    from homodyne_mpi.cmc import run_cmc

    result = run_cmc(sim.cfg, sim.problem, sim.points, SerialComm(), warm_start=None, output_dir=None)
    doc = result.to_json_dict()
    assert doc["combination"]["method"] == "gaussian_product"
    assert doc["priors"]["source"] == "config"
    assert set(doc["parameters"]) == {"contrast", "offset", "D0", "alpha", "D_offset", "sigma"}
    # config priors: centred on the starting values, half the bound width before tempering
    d0 = doc["priors"]["parameters"]["D0"]
    assert d0["mu"] == pytest.approx(STATIC_TRUTH["D0"]) and d0["sigma"] == pytest.approx(0.5 * (d0["high"] - d0["low"]))
    # no warm start: the chains start at the prior centre, and the data still pull D0 to
    # within 3 posterior widths of the truth
    assert abs(doc["parameters"]["D0"]["mean"] - STATIC_TRUTH["D0"]) < 3 * doc["parameters"]["D0"]["std"]


def test_fixed_parameters_and_calibration():
    sim = simulate(
        "static", n_frames=80, cmc={"sharding": {"num_shards": 2}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    sim.problem.free[-1] = False  # hold D_offset at its value
    sim.problem.theta0[-1] = sim.truth[-1]
    base = run(sim)
    tempered = run(sim, calibration=4.0)
    d_offset = sim.problem.names.index("D_offset")
    assert np.all(base.draws[:, d_offset] == sim.warm_start.theta[d_offset])
    assert base.to_json_dict()["parameters"]["D_offset"]["fixed"] is True
    assert base.to_json_dict()["parameters"]["D_offset"]["std"] == 0.0
    # dividing the log-likelihood by 4 doubles the posterior width
    d0 = sim.problem.names.index("D0")
    ratio = tempered.std[d0] / base.std[d0]
    assert 1.5 < ratio < 2.7


@pytest.mark.parametrize("method", ["robust_consensus_mc", "barycenter"])
def test_reparametrisation_scale_is_the_shard_likelihood_width_not_the_jackknife_std(method):
    """Priors are as wide as the jackknife says; the unit scale of ``z`` follows the
    likelihood NUTS actually samples: ``sqrt(K * calibration)`` model std for a shard of ``1/K``
    of the points, ``sqrt(calibration)`` when its likelihood is raised to ``K`` (barycenter)."""
    from types import SimpleNamespace

    from homodyne_mpi.cmc.priors import build_priors

    sim = simulate("static", n_frames=30)
    cfg = make_config("static", {"prior": {"width_factor": 10.0}, "combination": {"method": method}})
    cfg.optimization.nlsq.uncertainty = "jackknife"
    model_std = sim.warm_start.std
    jackknife_std = model_std * np.linspace(2.0, 6.0, model_std.size)  # uneven ratios
    sim.warm_start.jackknife = SimpleNamespace(std=jackknife_std)
    shards = 1 if method == "barycenter" else 3
    priors = build_priors(cfg, sim.problem, sim.warm_start, n_shards=3, noise_scale=0.003, calibration=5.0)
    np.testing.assert_allclose(priors.scale, np.sqrt(shards * 5.0) * model_std, rtol=1e-12)
    np.testing.assert_allclose(priors.sigma, 10.0 * jackknife_std, rtol=1e-12)
    assert priors.temper == pytest.approx(np.sqrt(shards))  # the prior is tempered only without the power
    untempered = build_priors(cfg, sim.problem, sim.warm_start, n_shards=3, noise_scale=0.003)
    np.testing.assert_allclose(untempered.scale, np.sqrt(shards) * model_std, rtol=1e-12)
    with pytest.raises(ValueError, match="calibration"):
        build_priors(cfg, sim.problem, sim.warm_start, n_shards=3, noise_scale=0.003, calibration=0.5)


@pytest.mark.parametrize("low, high", [(-14.7, 149.0), (-1.0, 1.0), (0.0, 1e-3), (-1e6, 5.0)])
def test_soft_clamp_maps_the_line_onto_the_bounds_and_is_the_identity_inside(low, high):
    from homodyne_mpi.cmc.bounded_maps import soft_clamp, soft_clamp_inverse, soft_clamp_log_slope

    width = high - low
    z = low + width * np.array([1e-9, 1e-3, 0.25, 0.5, 0.75, 1 - 1e-3, 1 - 1e-9])
    y = soft_clamp_inverse(z, low, high)
    np.testing.assert_allclose(np.asarray(soft_clamp(jnp.asarray(y), low, high)), z, rtol=1e-9, atol=1e-9 * width)
    slope = jax.vmap(jax.grad(lambda v: soft_clamp(v, low, high)))(jnp.asarray(y))
    np.testing.assert_allclose(
        np.exp(np.asarray(soft_clamp_log_slope(jnp.asarray(y), low, high))), np.asarray(slope), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        soft_clamp_log_slope(y, low, high, xp=np),
        np.asarray(soft_clamp_log_slope(jnp.asarray(y), low, high)),
        rtol=1e-12,
        atol=1e-12,
    )
    # dz/dy integrates to the change of z; over the whole line, to the width of the bounds
    start = low - 60.0 if width < 1e3 else -60.0
    grid = np.linspace(start, high + 60.0, 400_001)
    mass = np.trapezoid(np.exp(soft_clamp_log_slope(grid, low, high, xp=np)), grid)
    change = float(soft_clamp(jnp.asarray(grid[-1]), low, high) - soft_clamp(jnp.asarray(grid[0]), low, high))
    np.testing.assert_allclose(mass, change, rtol=1e-6)
    if width < 1e3:
        np.testing.assert_allclose(mass, width, rtol=1e-6)
    # identity (to exp(-distance)) more than 15 units from both bounds
    inside = grid[(grid > low + 15) & (grid < high - 15)]
    if inside.size:
        assert np.max(np.abs(np.asarray(soft_clamp(jnp.asarray(inside), low, high)) - inside)) < 1e-6


def diverging_first_attempt(monkeypatch, attempts: int = 1):
    """Make every shard's first ``attempts`` attempts look all-divergent; returns the list
    of ``(shard, target_accept_prob)`` sampled and the list of their warm-up lengths."""
    import homodyne_mpi.cmc.worker as runner

    original = runner.sample_shard
    calls = []
    calls_warmups: list[int] = []

    def first_diverges(worker, index, data, settings=None):
        settings = settings or worker.plan.settings
        calls.append((index, settings.target_accept_prob))
        calls_warmups.append(settings.num_warmup)
        out = original(worker, index, data, settings)
        if sum(1 for shard, _ in calls if shard == index) <= attempts:
            out.diverging = np.ones_like(out.diverging)
        return out

    monkeypatch.setattr(runner, "sample_shard", first_diverges)
    return calls, calls_warmups


def test_a_retry_that_would_be_left_out_is_extended_once_more_and_kept(monkeypatch):
    calls, warmups = diverging_first_attempt(monkeypatch, attempts=2)
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    result = run(sim)
    assert calls == [(0, 0.8), (0, 0.95), (0, 0.99)]
    assert warmups[1] == 2 * max(warmups[0], 1) and warmups[2] == 2 * warmups[1]
    sampler = result.to_json_dict()["sampler"]
    assert sampler["last_target_accept_prob"] == 0.99 and sampler["last_num_warmup"] == warmups[2]
    shard = result.to_json_dict()["shards"][0]
    assert shard["num_warmup"] == warmups[2] and shard["ok"] is True
    assert (
        shard["retried_because"].startswith("divergence rate 1.000 >")
        and "; then divergence rate 1.000 >" in shard["retried_because"]
    )


def test_the_last_attempt_never_lowers_the_retry_target():
    from homodyne_mpi.cmc.plan import last_settings_for, retry_settings_for
    from homodyne_mpi.cmc.sampler import SamplerSettings

    first = SamplerSettings(500, 300, 4, "sequential", 0.8)
    retry = retry_settings_for(first, 0.95)
    assert (retry.num_warmup, retry.target_accept_prob) == (1000, 0.95)
    last = last_settings_for(retry, 0.99)
    assert (last.num_warmup, last.target_accept_prob) == (2000, 0.99)
    assert last_settings_for(retry, 0.9).target_accept_prob == 0.95
    assert last_settings_for(retry_settings_for(first, 0.0), 0.99) is None


def divergent_fractions(monkeypatch, fractions):
    """Make shard attempt ``k`` have ``fractions[k]`` of its draws flagged divergent (the rest as
    sampled, none flagged); returns the list of warm-up lengths sampled."""
    import homodyne_mpi.cmc.worker as runner

    original = runner.sample_shard
    warmups: list[int] = []

    def flagged(worker, index, data, settings=None):
        settings = settings or worker.plan.settings
        warmups.append(settings.num_warmup)
        out = original(worker, index, data, settings)
        flags = np.zeros(out.diverging.size, dtype=bool)
        flags[: int(round(fractions[len(warmups) - 1] * flags.size))] = True
        out.diverging = flags.reshape(out.diverging.shape)
        return out

    monkeypatch.setattr(runner, "sample_shard", flagged)
    return warmups


def test_a_retry_above_the_retry_thresholds_is_extended_although_the_combination_would_keep_it(monkeypatch):
    # 5% divergent after the retry passes the combination's 30% but not the retry's 3% (LENIENT)
    warmups = divergent_fractions(monkeypatch, [0.5, 0.05, 0.0])
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    shard = run(sim).to_json_dict()["shards"][0]
    assert len(warmups) == 3 and warmups[2] == 2 * warmups[1]
    assert shard["num_warmup"] == warmups[2] and shard["divergence_rate"] == 0.0
    assert shard["retried_because"].split("; then ")[1].startswith("divergence rate 0.0")


def test_of_the_attempts_the_one_nearest_the_thresholds_is_kept(monkeypatch):
    warmups = divergent_fractions(monkeypatch, [0.5, 0.05, 0.2])
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    shard = run(sim).to_json_dict()["shards"][0]
    assert len(warmups) == 3
    assert shard["num_warmup"] == warmups[1] and shard["divergence_rate"] == pytest.approx(0.05, abs=0.005)


def test_a_shard_that_diverges_is_sampled_again_with_a_higher_target_accept_prob(monkeypatch, tmp_path):
    calls, _ = diverging_first_attempt(monkeypatch)
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    result = run(sim, output_dir=tmp_path)
    assert calls == [(0, 0.8), (0, 0.95)]
    shard = result.to_json_dict()["shards"][0]
    assert shard["ok"] is True and shard["target_accept_prob"] == 0.95
    assert shard["retried_because"].startswith("divergence rate 1.000 >")
    assert result.to_json_dict()["sampler"]["retry_target_accept_prob"] == 0.95
    # the checkpoint keeps which attempt was kept: a rerun reuses it without sampling
    calls.clear()
    again = run(sim, output_dir=tmp_path)
    assert calls == [] and again.shards[0].reused and again.shards[0].retried_because == shard["retried_because"]


def test_without_a_retry_the_diverging_shard_is_left_out(monkeypatch):
    calls, _ = diverging_first_attempt(monkeypatch)
    mcmc = {**FAST_MCMC, "retry_target_accept_prob": 0.0}
    sim = simulate("static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": mcmc, "combination": LENIENT})
    with pytest.raises(FitError, match="divergence rate 1.000"):
        run(sim)
    assert calls == [(0, 0.8)]


def test_task_farm_on_one_rank_runs_everything_in_order():
    from homodyne_mpi.parallel.dispatch import Task, run_task_farm

    tasks = [Task({"k": k}, (lambda k=k: {"x": np.full(3, float(k))})) for k in range(5)]
    seen = []
    stats = run_task_farm(SerialComm(), tasks, lambda h, a: ({"k": h["k"]}, {"y": a["x"] + 1}), seen.append)
    assert [r.task["k"] for r in seen] == list(range(5))
    assert [float(r.arrays["y"][0]) for r in seen] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stats.ranks[0].tasks == 5 and not stats.stopped
    stopped = run_task_farm(SerialComm(), tasks, lambda h, a: ({}, {}), should_stop=lambda: True)
    assert stopped.stopped and stopped.ranks[0].tasks == 0


def test_a_stop_request_ends_between_shards_and_keeps_the_finished_ones(monkeypatch, tmp_path):
    import homodyne_mpi.cmc.driver as driver
    import homodyne_mpi.cmc.worker as runner

    sim = simulate(
        "static", n_frames=80, cmc={"sharding": {"num_shards": 3}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    original = runner.sample_shard
    done = []

    def count(worker, index, data, *settings):
        out = original(worker, index, data, *settings)
        done.append(index)
        return out

    monkeypatch.setattr(runner, "sample_shard", count)
    monkeypatch.setattr(driver, "_stop_requested", lambda: len(done) >= 1)
    with pytest.raises(Interrupted, match="rerun the same command"):
        run(sim, output_dir=tmp_path)
    assert len(list((tmp_path / "cmc" / "shards").glob("shard_*.npz"))) == 1
    monkeypatch.setattr(driver, "_stop_requested", lambda: False)
    resumed = run(sim, output_dir=tmp_path)
    assert resumed.dispatch["shards_reused"] == 1 and resumed.dispatch["shards_run"] == 2


@pytest.mark.parametrize("chain_method", ["parallel", "sequential"])
def test_an_extended_attempt_runs_the_same_chains_longer(chain_method):
    # same keys and warm-up: the first draws of the longer run are the attempt's own, bit for bit
    import dataclasses

    from homodyne_mpi.cmc.plan import RootState, plan_run, shard_columns
    from homodyne_mpi.cmc.sampler import ShardSampler
    from homodyne_mpi.cmc.shard_model import ShardModel
    from homodyne_mpi.cmc.worker import extended_settings, shard_data

    sim = simulate("static", n_frames=40, cmc={"sharding": {"num_shards": 1}})
    state = RootState()
    plan = plan_run(sim.cfg, sim.problem, sim.points, sim.warm_start, 1.0, None, state)
    model = ShardModel(plan.priors, sim.problem.spec, sim.problem.layout, sim.problem.phi, n_points=plan.n_padded)
    data, _ = shard_data(shard_columns(sim.points, state.shards[0]), plan.n_padded, plan.fill_angle)
    settings = dataclasses.replace(plan.settings, num_warmup=60, num_samples=25, num_chains=2, chain_method=chain_method)
    longer = extended_settings(settings, 4)
    assert (longer.num_warmup, longer.num_samples, longer.target_accept_prob) == (60, 100, settings.target_accept_prob)
    short = ShardSampler(model, settings, seed=5).run(0, data)
    extended = ShardSampler(model, longer, seed=5).run(0, data)
    assert extended.draws.shape == (2, 100, short.draws.shape[2])
    np.testing.assert_array_equal(extended.draws[:, :25], short.draws)
    np.testing.assert_array_equal(extended.num_steps[:, :25], short.num_steps)
    # the chains go on moving after the attempt's last draw
    assert np.ptp(extended.draws[:, 25:, 0], axis=1).min() > 0


def rhat_fails_until_extended(monkeypatch, failures: int | None = None):
    """Report R-hat 1.2 for draws as long as the first diagnosed (an attempt's own draws per chain; a
    longer one as computed), or, given ``failures``, for the first that many diagnoses whatever their
    length; returns the ``(warm-up, target, draws)`` of each sampling and the draw counts diagnosed."""
    import homodyne_mpi.cmc.worker as runner

    original_sample, original_diagnostics = runner.sample_shard, runner.diagnostics
    sampled: list[tuple[int, float, int]] = []
    diagnosed: list[int] = []

    def sample(worker, index, data, settings=None):
        settings = settings or worker.plan.settings
        sampled.append((settings.num_warmup, settings.target_accept_prob, settings.num_samples))
        return original_sample(worker, index, data, settings)

    def diagnostics(draws):
        rhat, ess = original_diagnostics(draws)
        diagnosed.append(draws.shape[1])
        if (draws.shape[1] == diagnosed[0]) if failures is None else (len(diagnosed) <= failures):
            rhat = np.full_like(rhat, 1.2)
        return rhat, ess

    monkeypatch.setattr(runner, "sample_shard", sample)
    monkeypatch.setattr(runner, "diagnostics", diagnostics)
    return sampled, diagnosed


def test_a_shard_failing_on_rhat_alone_is_extended_not_retried(monkeypatch):
    sampled, diagnosed = rhat_fails_until_extended(monkeypatch)
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    result = run(sim)
    n = result.to_json_dict()["sampler"]["num_samples"]
    warmup = FAST_MCMC["num_warmup"]
    assert sampled == [(warmup, 0.8, n), (warmup, 0.8, 4 * n)]  # the same attempt, longer: no retry at 0.95
    assert diagnosed == [n, 4 * n]
    shard = result.shards[0]
    assert shard.extended_to == 4 * n and shard.retried_because is None
    assert shard.draws.shape[1] == n and shard.diverging.shape[1] == 4 * n
    assert shard.rhat_max < 1.2
    doc = result.to_json_dict()
    assert doc["sampler"]["extension_factor"] == 4 and doc["shards"][0]["extended_to"] == 4 * n
    check_recovers_truth(result, sim, max_rhat=1.3)


def test_a_shard_still_failing_on_rhat_after_its_extension_is_retried(monkeypatch):
    sampled, diagnosed = rhat_fails_until_extended(monkeypatch, failures=2)
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    result = run(sim)
    n, warmup = result.to_json_dict()["sampler"]["num_samples"], FAST_MCMC["num_warmup"]
    assert sampled[:3] == [(warmup, 0.8, n), (warmup, 0.8, 4 * n), (2 * warmup, 0.95, n)]
    shard = result.shards[0]
    assert shard.retried_because == f"R-hat 1.200 > 1.15 after {4 * n} draws per chain"  # LENIENT: max_rhat 1.3
    assert shard.target_accept_prob == 0.95 and shard.draws.shape[1] == n


def test_a_shard_whose_divergences_fail_is_not_extended(monkeypatch):
    # divergent draws are biased: more of them would not help, so the retry ladder runs instead
    warmups = divergent_fractions(monkeypatch, [0.5, 0.0])
    sim = simulate(
        "static", n_frames=60, cmc={"sharding": {"num_shards": 1}, "per_shard_mcmc": FAST_MCMC, "combination": LENIENT}
    )
    shard = run(sim).shards[0]
    assert len(warmups) == 2 and warmups[1] == 2 * warmups[0]  # first attempt, then the retry; nothing longer
    assert shard.extended_to == 0 and shard.target_accept_prob == 0.95


def test_thinning_keeps_every_kth_draw_up_to_the_last():
    from homodyne_mpi.cmc.worker import thinned

    draws = np.arange(2 * 12 * 1, dtype=float).reshape(2, 12, 1)
    np.testing.assert_array_equal(thinned(draws, 3)[0, :, 0], [3.0, 7.0, 11.0])
    np.testing.assert_array_equal(thinned(draws, 12), draws)
    assert thinned(draws, 5).shape == (2, 5, 1)
