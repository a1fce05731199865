"""Calibration of the NLSQ errors: how often the truth lies within 2 reported std.

Usage: python scripts/bench_uncertainty.py [--seeds 20] [--frames 150] [--blocks 20] [--output FILE]
           [--noise-model independent|frame_shared]
       python scripts/bench_uncertainty.py --correlator [--seeds 1] [--frame-noise 0.01] [--output FILE]

``--correlator``: the static speckle case of a correlator file (4 angles, 200 frames,
truth D0 2e4, alpha -0.3, D_offset 5e3, default bounds, 20 jackknife blocks), one fit per
seed, reporting convergence, iterations, bound flags, the share of converged jackknife
refits, std/std_model, whether the truth is within 3 reported std, and the degeneracy
warning. Otherwise, per case, the *calibration*: the median over seeds of the reported
std divided by the empirical scatter (standard deviation over seeds) of the fitted
values, per physical parameter (``calibration_ratio``; ``calibration_ratio_robust`` uses
1.4826 times the median absolute deviation instead of the standard deviation;
``calibration_ratio_z`` is ``1 / rms((fit - truth) / std)`` over the seeds, which stays
meaningful when the reported std changes from seed to seed). ``linear_control`` measures the
seeds themselves: the scatter of the linearised least-squares estimator over the same noise
draws against its std (``seed_factor``, 1 on average), and so the scatter ratio that an exactly
calibrated error bar would get on these seeds (``expected_calibration_ratio``); with 20 seeds
a std is known to about 16%. ``--noise-model frame_shared``
fits by generalised least squares under frame-shared noise (``nlsq/gls.py``) and reports the
calibration of its std, the ``gamma`` estimates and the fits' iterations.

For each mode (static, laminar_flow) and noise model (gaussian, speckle) it simulates
``--seeds`` data sets (6 angles, sigma 0.01; speckle adds per-frame terms of the same
size, see ``homodyne-mpi simulate --help``), fits each from the template defaults with
``uncertainty: jackknife`` and records, over (seed, physical parameter) pairs, the
fraction with ``|fit - truth| < 2 std`` for the model and the jackknife errors, and the
median ratio ``std_jackknife / std_model``. For the CMC calibration it also records the
jackknife's effective degrees of freedom (median over the physical parameters, per seed),
the tempering factor with and without the Student's t widening (and with the widening and
the significance test of ``cmc.calibration``, the factor CMC uses), and how often the truth
lies within ``1.645 sqrt(c) std_model`` (the 90% interval of a Gaussian posterior tempered
by ``c``) for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.parallel.devices import configure_host_devices  # noqa: E402

configure_host_devices(1)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from homodyne_mpi.cmc.calibration import independent_ratio, tempering_factor  # noqa: E402
from homodyne_mpi.config import load_config, render_template  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.data.simulate import simulate_dataset  # noqa: E402
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty  # noqa: E402
from homodyne_mpi.nlsq.fit import make_objective  # noqa: E402
from homodyne_mpi.nlsq.results import result_document  # noqa: E402
from homodyne_mpi.parallel import SerialComm  # noqa: E402

TRUTH = {"static": [8000.0, -0.3, 30.0], "laminar_flow": [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]}
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
CORRELATOR_TRUTH = [2.0e4, -0.3, 5.0e3]
CORRELATOR_PHI = [0.0, 45.0, 90.0, 135.0]


def write_config(mode: str, n_frames: int, n_blocks: int, workdir: Path, noise_fit: str = "independent") -> Path:
    """The template config of ``mode`` for the simulated file, jackknife on, at ``workdir``;
    ``noise_fit``: ``optimization.nlsq.noise_model``."""
    config = yaml.safe_load(render_template(mode))
    config["analyzer_parameters"].update({"dt": 0.1, "end_frame": n_frames})
    config["phi_filtering"]["enabled"] = False
    config["experimental_data"]["file_path"] = str(workdir / "data.h5")
    config["compute"]["compilation_cache_dir"] = str(workdir / "jax_cache")
    config["optimization"]["nlsq"]["uncertainty"] = "jackknife"
    config["optimization"]["nlsq"]["jackknife_blocks"] = n_blocks
    config["optimization"]["nlsq"]["jackknife_iterations"] = 100
    config["optimization"]["nlsq"]["noise_model"] = noise_fit
    path = workdir / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def simulate(
    workdir: Path, mode: str, truth, phi, n_frames: int, seed: int, noise_model: str, frame_noise: float | None = None
) -> None:
    """Write ``workdir/data.h5``: contrast 0.3, offset 1, sigma 0.01 (q 0.0054, dt 0.1 s)."""
    simulate_dataset(
        workdir / "data.h5",
        mode=mode,
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=n_frames,
        gap=2e6,
        physical=truth,
        contrast=0.3,
        offset=1.0,
        phi=phi,
        noise_sigma=0.01,
        seed=seed,
        noise_model=noise_model,
        frame_noise_sigma=frame_noise,
    )


def fit_config(path: Path, truth=None):
    """``(problem, result, linear)``: the data set of the config at ``path`` fitted as the pipeline does (one
    process); with ``truth`` (physical parameters) also ``linear_deviation`` there, else None."""
    cfg = load_config(path)
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    result = fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)
    linear = None if truth is None else linear_deviation(problem, points, cfg.optimization.nlsq, truth)
    return problem, result, linear


def linear_deviation(problem, points, options, truth) -> tuple[np.ndarray, np.ndarray]:
    """``(delta, sd)`` of the physical parameters: the Gauss-Newton step from the true parameters
    (contrast 0.3, offset 1) over ``points``, which is the linearised least-squares estimator's
    deviation ``(J^T W J)^-1 J^T W e`` for this seed's noise ``e`` (the simulated data are the model at
    the truth plus noise), and that estimator's std ``sqrt(diag (J^T W J)^-1)``. Over seeds, the
    standard deviation of ``delta`` divided by ``sd`` says how much this set of noise draws moves the
    parameters against the average draw: a calibrated error bar gets ``sd / scatter(delta)``, not 1, as
    its scatter ratio on these seeds (the *linear control*)."""
    n_angles = problem.layout.n_angles
    theta = np.asarray(problem.layout.join(np.full(n_angles, 0.3), np.full(n_angles, 1.0), np.asarray(truth)), dtype=float)
    hessian, gradient, _, _ = make_objective(problem, points, SerialComm(), options)(theta)
    free = np.asarray(problem.free, dtype=bool)
    delta, sd = np.zeros(len(theta)), np.zeros(len(theta))
    h_free = hessian[np.ix_(free, free)]
    delta[free] = -np.linalg.solve(h_free, gradient[free])
    sd[free] = np.sqrt(np.diag(np.linalg.inv(h_free)))
    physical = problem.layout.physical_slice
    return delta[physical], sd[physical]


def linear_control(names, linear) -> dict:
    """Over the seeds' ``linear_deviation``: ``seed_factor`` (scatter of ``delta`` / median ``sd``; 1 on
    average over noise draws) and ``expected_calibration_ratio`` (its inverse: the scatter ratio of an
    exactly calibrated error bar on these seeds), per physical parameter."""
    deltas, sds = np.asarray([d for d, _ in linear]), np.asarray([s for _, s in linear])
    factor = np.std(deltas, axis=0, ddof=1) / np.median(sds, axis=0)
    return {
        "seed_factor": dict(zip(names, factor.round(3).tolist())),
        "expected_calibration_ratio": dict(zip(names, (1.0 / factor).round(3).tolist())),
    }


def fitted_seeds(path: Path, workdir: Path, mode: str, n_frames: int, seeds: int, noise_model: str):
    """``(problem, result, linear)`` of seeds ``0 .. seeds - 1``: each simulated (``TRUTH[mode]``, ``PHI``),
    fitted with the config at ``path``, and its ``linear_deviation``."""
    for seed in range(seeds):
        simulate(workdir, mode, np.array(TRUTH[mode]), PHI, n_frames, seed, noise_model)
        yield fit_config(path, TRUTH[mode])


def correlator_case(seed: int, workdir: Path, frame_noise: float = 0.01, noise_fit: str = "independent") -> dict:
    """One fit of the static speckle correlator case (module docstring); with ``noise_fit``
    ``frame_shared`` the GLS fit, whose std is the model one (no jackknife refits)."""
    simulate(workdir, "static", CORRELATOR_TRUTH, CORRELATOR_PHI, 200, seed, "speckle", frame_noise)
    cfg = load_config(write_config("static", 200, 20, workdir, noise_fit=noise_fit))
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    result = fit_with_uncertainty(
        problem, upper_triangle_points(data.c2, problem.noise_sigma), SerialComm(), cfg.optimization.nlsq
    )
    doc = result_document(result, problem, cfg, data, dataset="correlator", timing_s={})
    physical = problem.layout.physical_slice
    std = (result.std_jackknife if result.std_jackknife is not None else result.std)[physical]
    jackknife = doc["jackknife"]
    return {
        "seed": seed,
        "converged": doc["converged"],
        "reason": doc["reason"],
        "iterations": doc["iterations"],
        "at_bound": doc["at_bound"],
        "refits_converged_fraction": None if jackknife is None else jackknife["refits_converged"] / jackknife["blocks"],
        "gamma": None if result.frame_noise is None else result.frame_noise["gamma"],
        "values": dict(zip(problem.layout.physical_names, result.theta[physical].tolist())),
        "std": dict(zip(problem.layout.physical_names, std.tolist())),
        "std_over_std_model": dict(zip(problem.layout.physical_names, (std / result.std[physical]).round(3).tolist())),
        "truth_within_3_std": dict(
            zip(problem.layout.physical_names, (np.abs(result.theta[physical] - CORRELATOR_TRUTH) < 3 * std).tolist())
        ),
        "degeneracy": doc["degeneracy"],
    }


def study(
    mode: str, noise_model: str, seeds: int, n_frames: int, n_blocks: int, workdir: Path, noise_fit: str = "independent"
) -> dict:
    """One case over ``seeds`` (module docstring); with ``noise_fit`` ``frame_shared`` the fit is the
    generalised least squares of ``nlsq/gls.py`` and its (model) std is the reported one, so the
    jackknife's figures (coverage, ratios, degrees of freedom, tempering) are left out."""
    if noise_fit == "frame_shared":
        return study_frame_shared(mode, noise_model, seeds, n_frames, workdir)
    path = write_config(mode, n_frames, n_blocks, workdir)
    truth = np.array(TRUTH[mode])
    fitted, reported = [], []
    inside_model, inside_jackknife, ratios, converged = [], [], [], 0
    dofs, squared_errors = [], []
    tempering: dict[str, list[float]] = {"plain": [], "t_widened": [], "t_widened_significant": []}
    inside_tempered: dict[str, list[bool]] = {kind: [] for kind in tempering}
    linear = []
    start = time.perf_counter()
    for problem, result, deviation in fitted_seeds(path, workdir, mode, n_frames, seeds, noise_model):
        physical = problem.layout.physical_slice
        linear.append(deviation)
        fitted.append(result.theta[physical])
        reported.append(result.std_jackknife[physical])
        error = np.abs(result.theta[physical] - truth)
        inside_model += list(error < 2 * result.std[physical])
        inside_jackknife += list(error < 2 * result.std_jackknife[physical])
        ratios.append(result.std_jackknife[physical] / result.std[physical])
        converged += int(result.converged)
        use = np.zeros(len(result.theta), dtype=bool)
        use[physical] = problem.free[physical]
        dof = result.jackknife.effective_dof
        squared_errors.append((error / result.std[physical]) ** 2)
        dofs.append(float(np.median(dof[use])))
        ratio = independent_ratio(result.jackknife)
        for kind, kind_dof, kind_ratio in (
            ("plain", None, None),
            ("t_widened", dof, None),
            ("t_widened_significant", dof, ratio),
        ):
            factor = tempering_factor(result.std_jackknife, result.std, kind_dof, use, kind_ratio)
            tempering[kind].append(factor)
            inside_tempered[kind] += list(error < 1.645 * np.sqrt(factor) * result.std[physical])
    names = problem.layout.physical_names
    scatter = np.std(fitted, axis=0, ddof=1)
    return {
        **calibration_ratios(names, fitted, reported, truth),
        "linear_control": linear_control(names, linear),
        "per_seed": {
            "values": np.asarray(fitted).tolist(),
            "std": np.asarray(reported).tolist(),
            "std_model": ratios_model(reported, ratios).tolist(),
        },
        "calibration_ratio_model": dict(
            zip(names, (np.median(ratios_model(reported, ratios), axis=0) / scatter).round(3).tolist())
        ),
        "pairs": len(inside_model),
        "coverage_2std_model": float(np.mean(inside_model)),
        "coverage_2std_jackknife": float(np.mean(inside_jackknife)),
        "median_ratio_jackknife_to_model": dict(zip(names, np.median(ratios, axis=0).round(3).tolist())),
        "fits_converged": converged,
        "mean_squared_error_in_model_std": dict(zip(names, np.mean(squared_errors, axis=0).round(2).tolist())),
        "mean_variance_ratio_jackknife_to_model": dict(zip(names, np.mean(np.square(ratios), axis=0).round(2).tolist())),
        "jackknife_effective_dof": {"median": float(np.median(dofs)), "range": [float(min(dofs)), float(max(dofs))]},
        "tempering_factor": {
            kind: {"median": float(np.median(v)), "range": [float(min(v)), float(max(v))], "per_seed": v}
            for kind, v in tempering.items()
        },
        "coverage_90_tempered_gaussian": {kind: float(np.mean(v)) for kind, v in inside_tempered.items()},
        "seconds": time.perf_counter() - start,
    }


def calibration_ratios(names, fitted, reported, truth) -> dict:
    """The three calibration ratios of the module docstring, per physical parameter."""
    fitted, reported = np.asarray(fitted), np.asarray(reported)
    scatter = np.std(fitted, axis=0, ddof=1)
    robust_scatter = 1.4826 * np.median(np.abs(fitted - np.median(fitted, axis=0)), axis=0)
    z_rms = np.sqrt(np.mean(((fitted - truth) / reported) ** 2, axis=0))
    return {
        "calibration_ratio": dict(zip(names, (np.median(reported, axis=0) / scatter).round(3).tolist())),
        "calibration_ratio_z": dict(zip(names, (1.0 / z_rms).round(3).tolist())),
        "calibration_ratio_robust": dict(zip(names, (np.median(reported, axis=0) / robust_scatter).round(3).tolist())),
    }


def study_frame_shared(mode: str, noise_model: str, seeds: int, n_frames: int, workdir: Path) -> dict:
    """``study`` with ``noise_model: frame_shared``: the calibration of the GLS std, the estimates of
    ``gamma`` and the fits' convergence and iterations."""
    path = write_config(mode, n_frames, 2, workdir, noise_fit="frame_shared")
    truth = np.array(TRUTH[mode])
    fitted, reported, gammas, iterations, linear, converged = [], [], [], [], [], 0
    start = time.perf_counter()
    for problem, result, deviation in fitted_seeds(path, workdir, mode, n_frames, seeds, noise_model):
        physical = problem.layout.physical_slice
        linear.append(deviation)
        fitted.append(result.theta[physical])
        reported.append(result.std[physical])
        gammas.append(result.frame_noise["gamma"])
        iterations.append(result.frame_noise["iterations"])
        converged += int(result.converged)
    names = problem.layout.physical_names
    return {
        **calibration_ratios(names, fitted, reported, truth),
        "linear_control": linear_control(names, linear),
        "per_seed": {"values": np.asarray(fitted).tolist(), "std": np.asarray(reported).tolist(), "gamma": gammas},
        "fits_converged": converged,
        "gls_iterations": {"median": float(np.median(iterations)), "range": [int(min(iterations)), int(max(iterations))]},
        "gamma": {"median": float(np.median(gammas)), "range": [float(min(gammas)), float(max(gammas))]},
        "seconds": time.perf_counter() - start,
    }


def ratios_model(reported, ratios) -> np.ndarray:
    """The model std of each seed, from the reported (jackknife) std and their ratio."""
    return np.asarray(reported) / np.asarray(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--blocks", type=int, default=20, help="jackknife_blocks")
    parser.add_argument("--modes", default="static,laminar_flow")
    parser.add_argument("--noise", default="gaussian,speckle")
    parser.add_argument("--output", default="bench_results/bench_uncertainty.json")
    parser.add_argument("--correlator", action="store_true", help="the static speckle correlator case, --seeds fits")
    parser.add_argument("--frame-noise", type=float, default=0.01, help="--correlator: frame_noise_sigma of the speckle model")
    parser.add_argument(
        "--noise-model",
        default="independent",
        choices=("independent", "frame_shared"),
        help="optimization.nlsq.noise_model of the fits (frame_shared: GLS, its model std reported)",
    )
    args = parser.parse_args()
    if args.correlator:
        with tempfile.TemporaryDirectory() as folder:
            cases = []
            for seed in range(args.seeds):
                cases.append(correlator_case(seed, Path(folder), args.frame_noise, args.noise_model))
                print(cases[-1], flush=True)
        write_json(
            args.output,
            {"benchmark": "correlator case", "command": " ".join(["python", *sys.argv]), "machine": machine(), "fits": cases},
        )
        return
    document = {
        "benchmark": "uncertainty calibration",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "seeds": args.seeds,
        "frames": args.frames,
        "jackknife_blocks": args.blocks,
        "noise_model": args.noise_model,
        "angles": len(PHI),
        "results": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            for noise_model in args.noise.split(","):
                document["results"][f"{mode}/{noise_model}"] = study(
                    mode, noise_model, args.seeds, args.frames, args.blocks, Path(folder), args.noise_model
                )
                print(mode, noise_model, document["results"][f"{mode}/{noise_model}"], flush=True)
    write_json(args.output, document)


if __name__ == "__main__":
    main()
