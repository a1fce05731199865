"""Study: generalised least squares (GLS) for speckle noise against the project's OLS fit.

Usage: python scripts/study_gls_speckle.py [--modes static,laminar_flow] [--noise gaussian,speckle]
           [--seeds 20] [--frames 100] [--blocks 20] [--frame-noise SIGMA] [--max-iterations 3000]
           [--output bench_results/study_gls_speckle.json] [--append]

For each mode and noise model it simulates ``--seeds`` data sets as ``bench_uncertainty.py``
does (6 angles, contrast 0.3, offset 1, point noise ``s = 0.01``; ``speckle`` adds one term
per frame and angle of std ``--frame-noise``, default ``s``, so ``gamma = fs^2 / s^2 = 1``)
and fits each twice:

- OLS, the baseline: the project's ``fit_with_uncertainty`` from the template defaults with
  ``uncertainty: jackknife`` (``--blocks`` frame blocks); its model std and jackknife std.
- GLS with ``Sigma_a = s_a^2 (I + gamma A_a A_a^T)`` (``homodyne_mpi.nlsq.frame_noise``):
  ``gamma`` and ``s_a^2`` estimated by maximum likelihood at the OLS residuals, the project's
  Levenberg-Marquardt solver on the GLS cost from the OLS optimum (at most ``--max-iterations``),
  ``gamma`` re-estimated at that optimum, a second fit, ``gamma`` estimated once more, and the
  model std ``sqrt(diag H^-1)`` with ``H = J^T Sigma^-1 J`` there (no chi2 rescaling: ``s_a^2``
  is estimated).

Per case and physical parameter it reports the std of the fitted values over the seeds
(and 1.4826 times their median absolute deviation), the median reported std, and three
calibration ratios for OLS-jackknife, OLS-model and GLS-model errors: ``scatter_ratio`` =
median std / std of the values, ``z_ratio`` = ``1 / rms((fit - truth) / std)``,
``robust_ratio`` = median std / (1.4826 MAD); 1 is calibrated, below 1 the errors are too
small. Also the ``gamma`` estimates, how many fits lie far along the degenerate valley
(static: ``D0`` outside 0.7-1.3 times the truth; laminar flow: ``beta < 0.05`` or
``gamma_dot_t0`` above 10 times the truth), the GLS iterations and convergence (the
solver's flag and the final Gauss-Newton decrement ``g^T H^-1 g``), and a check that GLS at
``gamma = 0`` with the project's weights reproduces the OLS model std. ``--append`` adds the
cases to an existing ``--output`` (e.g. a second run with ``--frame-noise 0.03``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import bench_uncertainty as bench  # noqa: E402  (configures one host device on import)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.config import load_config  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.model import c2_points  # noqa: E402
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty  # noqa: E402
from homodyne_mpi.nlsq.fit import lm_options  # noqa: E402
from homodyne_mpi.nlsq.frame_noise import (  # noqa: E402
    estimate_frame_noise_ratio,
    frame_gram,
    frame_patterns,
    frame_sums,
    gls_normal_equations,
)
from homodyne_mpi.nlsq.linalg import covariance_from_hessian  # noqa: E402
from homodyne_mpi.nlsq.solver import levenberg_marquardt, newton_decrement  # noqa: E402
from homodyne_mpi.parallel import SerialComm  # noqa: E402

POINT_NOISE = 0.01
"""Std of the simulated point noise ``s`` (c2 units), as in ``bench_uncertainty.simulate``."""

DECREMENT_TOL = 1e-8
"""GLS fits stop when the Gauss-Newton decrement ``g^T H^-1 g`` (cost units) is at most this
(the distance to the quadratic optimum is then ``1e-4`` std), or by the config's ``gtol``/``xtol``."""

GLS_FTOL = 1e-13
"""``ftol`` of the GLS fits: the config's 1e-10 (relative cost reduction) stops them at a decrement
of up to ~1e-6, and a fit creeping along a valley could stop on it far from the optimum."""


class GlsObjective:
    """The GLS cost of one data set as a function of the parameters, for the project's solver."""

    def __init__(self, problem, points, n_frames: int):
        self.y = np.asarray(points.value, dtype=float)
        self.points = (np.asarray(points.angle), np.asarray(points.frame_i), np.asarray(points.frame_j))
        self.n_angles, self.n_frames = len(problem.phi), n_frames
        self.patterns = frame_patterns(frame_gram(*self.points, n_angles=self.n_angles, n_frames=n_frames))
        self.model = model_and_jacobian(problem, points)

    def sums(self, theta):
        """``FrameSums`` of the residuals ``y - f(theta)`` and the Jacobian ``df/dtheta``."""
        value, jacobian = self.model(jnp.asarray(theta))
        residual = self.y - np.asarray(value)
        return frame_sums(*self.points, residual, np.asarray(jacobian), n_angles=self.n_angles, n_frames=self.n_frames)

    def normal_equations(self, theta, gamma: float, noise_variance):
        """``(H, g, cost)`` of ``gls_normal_equations`` at ``theta``."""
        return gls_normal_equations(self.sums(theta), self.patterns, gamma, noise_variance)

    def estimate_noise(self, theta):
        """ML ``(gamma, s_a^2)`` at the residuals of ``theta``."""
        return estimate_frame_noise_ratio(self.sums(theta), self.patterns)

    def evaluation(self, gamma: float, noise_variance):
        """``evaluate(theta)`` for ``levenberg_marquardt``: its gradient is that of the cost, ``-J^T Sigma^-1 r``."""

        def evaluate(theta):
            hessian, gradient, cost = self.normal_equations(theta, gamma, noise_variance)
            return hessian, -gradient, cost, cost

        return evaluate


def model_and_jacobian(problem, points):
    """Compiled ``theta -> (c2 at the points, d c2 / d theta)``."""
    layout, spec = problem.layout, problem.spec
    phi = jnp.asarray(problem.phi)
    angle, frame_i, frame_j = (jnp.asarray(x) for x in (points.angle, points.frame_i, points.frame_j))

    def c2(theta):
        contrast, offset, physical = layout.split(theta)
        return c2_points(physical, contrast, offset, phi, angle, frame_i, frame_j, spec)

    return jax.jit(lambda theta: (c2(theta), jax.jacfwd(c2)(theta)))


def fit_at_fixed_noise(objective: GlsObjective, problem, theta0, gamma: float, noise_variance, options):
    """The project's Levenberg-Marquardt on the GLS cost at fixed ``(gamma, s_a^2)``."""
    evaluate = objective.evaluation(gamma, noise_variance)
    return levenberg_marquardt(evaluate, theta0, problem.lower, problem.upper, problem.free, options, quiet=True)


def gls_fit(objective: GlsObjective, problem, theta_ols, options) -> dict:
    """Estimate the noise at the OLS optimum, fit, re-estimate, fit again, estimate; the model std there."""
    start = time.perf_counter()
    gamma_at_ols, variance = objective.estimate_noise(theta_ols)
    first = fit_at_fixed_noise(objective, problem, theta_ols, gamma_at_ols, variance, options)
    gamma_after_first, variance = objective.estimate_noise(first.theta)
    second = fit_at_fixed_noise(objective, problem, first.theta, gamma_after_first, variance, options)
    gamma_final, variance = objective.estimate_noise(second.theta)
    hessian, gradient, cost = objective.normal_equations(second.theta, gamma_final, variance)
    std = np.sqrt(np.diag(covariance_from_hessian(hessian, problem.free, 1.0)))
    free = problem.free
    decrement = newton_decrement(
        second.theta[free], hessian[np.ix_(free, free)], -gradient[free], problem.lower[free], problem.upper[free]
    )
    physical = problem.layout.physical_slice
    return {
        "theta": second.theta[physical].tolist(),
        "std": std[physical].tolist(),
        "gamma_at_ols": gamma_at_ols,
        "gamma_after_first_fit": gamma_after_first,
        "gamma_final": gamma_final,
        "point_noise_final": np.sqrt(variance).tolist(),
        "iterations": [first.iterations, second.iterations],
        "converged": [bool(first.converged), bool(second.converged)],
        "reasons": [first.reason, second.reason],
        "final_decrement": decrement,
        "cost": cost,
        "seconds": time.perf_counter() - start,
    }


def ols_model_std_check(objective: GlsObjective, problem, result) -> float:
    """Largest relative difference between the project's OLS model std and GLS at ``gamma = 0``
    with the project's weights, both scaled by the reduced chi2."""
    variance = np.asarray(problem.noise_sigma, dtype=float) ** 2
    hessian, _, chi2 = objective.normal_equations(result.theta, 0.0, variance)
    reduced_chi2 = chi2 / (len(objective.y) - int(problem.free.sum()))
    std = np.sqrt(np.diag(covariance_from_hessian(hessian, problem.free, reduced_chi2)))
    free = problem.free
    return float(np.max(np.abs(std[free] / result.std[free] - 1.0)))


def one_seed(case: dict, seed: int, workdir: Path, config_path: Path, options_for) -> tuple[dict, list[str]]:
    """Simulate one data set, fit it by OLS (with the jackknife) and by GLS: the physical parameters
    of each (the record) and their names."""
    bench.simulate(workdir, case["mode"], case["truth"], bench.PHI, case["frames"], seed, case["noise"], case["frame_noise_arg"])
    cfg = load_config(config_path)
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    start = time.perf_counter()
    result = fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)
    ols_seconds = time.perf_counter() - start
    objective = GlsObjective(problem, points, case["frames"])
    physical = problem.layout.physical_slice
    record = {
        "seed": seed,
        "ols": {
            "theta": result.theta[physical].tolist(),
            "std_model": result.std[physical].tolist(),
            "std_jackknife": result.std_jackknife[physical].tolist(),
            "converged": bool(result.converged),
            "iterations": int(result.iterations),
            "seconds": ols_seconds,
        },
        "gls": gls_fit(objective, problem, np.asarray(result.theta, dtype=float), options_for(cfg)),
        "check_gamma0_model_std_max_rel_diff": ols_model_std_check(objective, problem, result),
    }
    return record, list(problem.layout.physical_names)


def calibration(values, std, truth) -> dict:
    """Per parameter: scatter of the values over seeds, median reported std and the ratios (module docstring)."""
    values, std = np.asarray(values), np.asarray(std)
    scatter = values.std(axis=0, ddof=1)
    robust_scatter = 1.4826 * np.median(np.abs(values - np.median(values, axis=0)), axis=0)
    median_std = np.median(std, axis=0)
    z = (values - truth) / std
    return {
        "sd_values": scatter,
        "robust_sd_values": robust_scatter,
        "median_std": median_std,
        "scatter_ratio": median_std / scatter,
        "z_ratio": 1.0 / np.sqrt(np.mean(z**2, axis=0)),
        "robust_ratio": median_std / robust_scatter,
        "coverage_2std": np.mean(np.abs(z) < 2, axis=0),
        "mean_z": z.mean(axis=0),
    }


def far_along_valley(mode: str, values, truth) -> np.ndarray:
    """Per seed, whether the fit lies far along the degenerate valley (module docstring)."""
    values = np.asarray(values)
    if mode == "static":
        return (values[:, 0] > 1.3 * truth[0]) | (values[:, 0] < 0.7 * truth[0])
    return (values[:, 4] < 0.05) | (values[:, 3] > 10.0 * truth[3])


def spread(values) -> dict:
    """Median and range of a list of numbers."""
    values = np.asarray(values, dtype=float)
    return {"median": float(np.median(values)), "range": [float(values.min()), float(values.max())]}


def by_name(names, array) -> dict:
    """``{parameter: value}`` rounded to 4 significant digits."""
    return {name: float(f"{value:.4g}") for name, value in zip(names, np.asarray(array).tolist())}


def summarize(case: dict, records: list[dict], names) -> dict:
    """The case's tables from its per-seed records."""
    truth = np.asarray(case["truth"])
    ols = [r["ols"]["theta"] for r in records]
    gls = [r["gls"]["theta"] for r in records]
    methods = {
        "OLS-jackknife": calibration(ols, [r["ols"]["std_jackknife"] for r in records], truth),
        "OLS-model": calibration(ols, [r["ols"]["std_model"] for r in records], truth),
        "GLS-model": calibration(gls, [r["gls"]["std"] for r in records], truth),
    }
    seeds = [r["seed"] for r in records]
    iterations = [sum(r["gls"]["iterations"]) for r in records]
    return {
        "parameters": list(names),
        "truth": by_name(names, truth),
        "methods": {method: {k: by_name(names, v) for k, v in table.items()} for method, table in methods.items()},
        "gamma": {
            "truth": case["gamma_true"],
            "at_ols": spread([r["gls"]["gamma_at_ols"] for r in records]),
            "final": spread([r["gls"]["gamma_final"] for r in records]),
        },
        "point_noise_final_mean_over_angles": spread([np.mean(r["gls"]["point_noise_final"]) for r in records]),
        "far_along_valley": {
            label: [seed for seed, far in zip(seeds, far_along_valley(case["mode"], values, truth)) if far]
            for label, values in (("OLS", ols), ("GLS", gls))
        },
        "gls_iterations_total": {**spread(iterations), "per_seed": iterations},
        "gls_converged": sum(all(r["gls"]["converged"]) for r in records),
        "gls_final_decrement_max": max(r["gls"]["final_decrement"] for r in records),
        "ols_converged": sum(r["ols"]["converged"] for r in records),
        "seconds": {
            "ols_with_jackknife": spread([r["ols"]["seconds"] for r in records]),
            "gls": spread([r["gls"]["seconds"] for r in records]),
        },
        "check_gamma0_model_std_max_rel_diff": max(r["check_gamma0_model_std_max_rel_diff"] for r in records),
    }


def run_case(mode: str, noise: str, args, workdir: Path) -> dict:
    """All seeds of one (mode, noise) case: its tables and per-seed records."""
    frame_noise = 0.0 if noise == "gaussian" else (POINT_NOISE if args.frame_noise is None else args.frame_noise)
    case = {
        "mode": mode,
        "noise": noise,
        "truth": bench.TRUTH[mode],
        "frames": args.frames,
        "point_noise_sigma": POINT_NOISE,
        "frame_noise_sigma": frame_noise,
        "gamma_true": (frame_noise / POINT_NOISE) ** 2,
        "frame_noise_arg": args.frame_noise if noise == "speckle" else None,
    }
    config_path = bench.write_config(mode, args.frames, args.blocks, workdir)

    def options_for(cfg):
        options = lm_options(cfg.optimization.nlsq, max_iterations=args.max_iterations, decrement_tol=DECREMENT_TOL)
        return replace(options, ftol=GLS_FTOL)

    start = time.perf_counter()
    records, names = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        record, names = one_seed(case, seed, workdir, config_path, options_for)
        records.append(record)
        gls = records[-1]["gls"]
        print(
            f"{mode}/{noise} seed {seed}: OLS {np.round(records[-1]['ols']['theta'], 6)} GLS {np.round(gls['theta'], 6)} "
            f"gamma {gls['gamma_at_ols']:.3f}->{gls['gamma_final']:.3f} iterations {gls['iterations']} "
            f"converged {gls['converged']} ({gls['seconds']:.1f} s)",
            flush=True,
        )
    del case["frame_noise_arg"]
    return {**case, "seconds": time.perf_counter() - start, "summary": summarize(case, records, names), "per_seed": records}


def case_key(mode: str, noise: str, frame_noise: float | None) -> str:
    """``mode/noise``, with ``/frame_noise=...`` when the speckle frame noise is not the default."""
    key = f"{mode}/{noise}"
    return key if noise != "speckle" or frame_noise is None else f"{key}/frame_noise={frame_noise:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="static,laminar_flow")
    parser.add_argument("--noise", default="gaussian,speckle")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=20, help="jackknife_blocks of the OLS fit")
    parser.add_argument(
        "--frame-noise", type=float, default=None, help="speckle frame_noise_sigma (default: the point noise 0.01)"
    )
    parser.add_argument("--max-iterations", type=int, default=3000, help="of each GLS Levenberg-Marquardt fit")
    parser.add_argument("--output", default="bench_results/study_gls_speckle.json")
    parser.add_argument("--append", action="store_true", help="add the cases to an existing --output")
    args = parser.parse_args()
    command = " ".join(["python", *sys.argv])
    document = {"study": "GLS for speckle noise vs OLS", "commands": [], "machine": machine(), "cases": {}}
    if args.append and Path(args.output).exists():
        document = json.loads(Path(args.output).read_text())
    document["commands"].append(command)
    document["machine"] = machine()
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            for noise in args.noise.split(","):
                key = case_key(mode, noise, args.frame_noise)
                document["cases"][key] = {"command": command, **run_case(mode, noise, args, Path(folder))}
    write_json(args.output, document)


if __name__ == "__main__":
    main()
