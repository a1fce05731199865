"""What an NLSQ fit writes: ``nlsq/result.json`` and the arrays of ``nlsq/fit.h5``."""

from __future__ import annotations

import numpy as np

from ..data.loader import XPCSData
from ..nlsq_summary import RATE_TIMES, degeneracy
from .bands import band_arrays
from .fit import NLSQProblem, NLSQResult
from .linalg import correlation_matrix
from .profile import profile_document, wide_sides


def result_document(result: NLSQResult, problem: NLSQProblem, cfg, data: XPCSData, *, dataset: str, timing_s: dict) -> dict:
    """The ``nlsq/result.json`` mapping (``docs/architecture.md``, "Results")."""
    std_model = result.std
    std_jackknife = result.std_jackknife
    reported = result.jackknife if cfg.optimization.nlsq.uncertainty == "jackknife" else None
    std = reported.std if reported is not None else std_model
    covariance = reported.covariance if reported is not None else result.covariance
    correlation = correlation_matrix(covariance)
    physical = list(problem.layout.physical_names)
    profile = profile_document(result.profile, result.names, result.theta, result.covariance)
    wide = [[name, side, entry["half_width"], entry["reached"], entry["value"]] for name, side, entry in wide_sides(profile)]
    parameters = {}
    for k, name in enumerate(result.names):
        parameters[name] = {
            "value": float(result.theta[k]),
            "std": float(std[k]),
            "std_model": float(std_model[k]),
            "std_jackknife": None if std_jackknife is None else float(std_jackknife[k]),
            "std_ratio_jackknife_to_model": None
            if std_jackknife is None or std_model[k] == 0
            else float(std_jackknife[k] / std_model[k]),
            "fixed": not bool(problem.free[k]),
            "at_bound": result.at_bound[k] if result.at_bound else None,
            "bounds": [float(problem.lower[k]), float(problem.upper[k])],
            "profile": profile.get(name),
        }
    free_names = [name for name, free in zip(result.names, problem.free) if free]
    free_index = np.flatnonzero(problem.free)
    return {
        "method": "nlsq",
        "dataset": dataset,
        "analysis_mode": cfg.analysis_mode,
        "shear_form": cfg.shear_form,
        "per_angle_scaling": problem.layout.scaling,
        "converged": bool(result.converged),
        "reason": result.reason,
        "iterations": int(result.iterations),
        "projected_gradient": float(result.projected_gradient),
        "at_bound": {name: side for name, side in zip(result.names, result.at_bound) if side},
        "chi2": float(result.chi2),
        "reduced_chi2": float(result.reduced_chi2),
        "n_points": int(result.n_points),
        "n_free_parameters": int(result.n_free),
        "n_ranks": int(result.n_ranks),
        "uncertainty": "model" if reported is None else "jackknife",
        "noise_model": cfg.optimization.nlsq.noise_model,
        "frame_noise": result.frame_noise,
        "jackknife": None
        if result.jackknife is None
        else {
            "blocks": int(len(result.jackknife.blocks)),
            "block_frames": [int(stop - first) for first, stop in result.jackknife.blocks],
            "parallel": result.jackknife.parallel,
            "refits_converged": int(np.count_nonzero(result.jackknife.converged)),
            "refits_unconverged": [
                f"{first + 1}..{stop}" for (first, stop), ok in zip(result.jackknife.blocks, result.jackknife.converged) if not ok
            ],
            "unconverged_rule": "excluded: the covariance uses the converged refits, scaled by (K-1)/K' (model covariance if fewer than 2)",
            "effective_dof": {
                name: float(dof) for name, dof, free in zip(result.names, result.jackknife.effective_dof, problem.free) if free
            },
            "seconds": float(result.jackknife.seconds),
            "passes": int(result.jackknife.passes),
        },
        "parameters": parameters,
        "correlation": {"names": free_names, "matrix": correlation[np.ix_(free_index, free_index)].tolist()},
        "degeneracy": degeneracy(
            result.names, result.theta, std, correlation, physical, correlation_matrix(result.covariance), wide
        ),
        "rates": rate_summary(result, problem),
        "data": {
            "source": data.source,
            "layout": data.layout,
            "q": float(data.q),
            "dt": float(data.dt),
            "dt_source": data.dt_source,
            "start_frame": int(data.start_frame),
            "end_frame": int(data.end_frame),
            "phi": [float(x) for x in data.phi],
            "noise_sigma": [float(x) for x in problem.noise_sigma],
        },
        "timing_s": {key: float(value) for key, value in timing_s.items()},
        "memory": result.memory,
        "history": result.history,
    }


def rate_summary(result: NLSQResult, problem: NLSQProblem) -> dict:
    """``D(t)`` (and ``gamma_dot(t)``) with their reported 1-sigma bands at a few log-spaced times."""
    bands = band_arrays(result.theta, result.covariance, result.jackknife, problem.layout, problem.spec)
    n_frames = len(bands["bands/t"])
    frames = np.unique(np.geomspace(1, max(n_frames - 1, 1), RATE_TIMES).round().astype(int))
    keys = ("t", "D", "D_std", "gamma_dot", "gamma_dot_std")  # gamma_dot only with shear
    return {key: bands[f"bands/{key}"][frames].tolist() for key in keys if f"bands/{key}" in bands}


def small_fit_arrays(result: NLSQResult, problem: NLSQProblem, data) -> dict[str, np.ndarray]:
    """The datasets of ``nlsq/fit.h5`` other than the ``c2`` matrices and ``matrix_frames``
    (``data`` needs only ``t`` and ``phi``: a loaded ``XPCSData`` or a streamed source)."""
    jackknife = result.jackknife
    covariance = jackknife.covariance if jackknife is not None else result.covariance
    bands = band_arrays(result.theta, result.covariance, jackknife, problem.layout, problem.spec)
    arrays = {
        **bands,
        "covariance_model": result.covariance,
        "t": data.t,
        "phi": np.asarray(data.phi, dtype=float),
        "covariance": covariance,
        "parameters/names": np.asarray(result.names, dtype="S"),
        "parameters/values": result.theta,
        "parameters/std_model": result.std,
        "noise_sigma": problem.noise_sigma,
    }
    if jackknife is not None:
        arrays["covariance_jackknife"] = jackknife.covariance
        for name in ("replicates", "covariance_replicates", "covariance_independent", "blocks", "converged"):
            arrays[f"jackknife/{name}"] = getattr(jackknife, name)
    return arrays
