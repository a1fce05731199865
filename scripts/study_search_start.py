"""The start search's refinements and the fit's first damping, each way, on simulated data.

Usage: python scripts/study_search_start.py [--cases laminar_flow/gaussian:6,laminar_flow/speckle:6,static/speckle:3]
                                           [--output FILE]

For each case (the data of ``scripts/bench_uncertainty.py``: 6 angles, 100 frames, sigma 0.01,
template start, model errors) and seed, the full NLSQ fit (search included) is run three
ways: as built (plain refinements, the fit from the search's point at the LM damping
``fit.SEARCHED_START_DAMPING``, 1e-6); with the refinements taking the geodesic acceleration
the fit itself uses (as before); and with the fit starting at the solver's default damping
1e-3 (as before).
Records per run the refinements' iterations, the fit's iterations and rejected steps, whether
it converged, and its chi2 (the optimum reached). Docs: docs/nlsq.md, "Starting values".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_uncertainty import PHI, TRUTH, simulate, write_config  # noqa: E402

from homodyne_mpi.parallel.devices import configure_host_devices  # noqa: E402

configure_host_devices(1)

import numpy as np  # noqa: E402

from homodyne_mpi.config import load_config  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.nlsq import build_problem, fit_nlsq  # noqa: E402
from homodyne_mpi.nlsq import fit as nlsq_fit  # noqa: E402
from homodyne_mpi.nlsq import search as nlsq_search  # noqa: E402
from homodyne_mpi.nlsq.solver import LMOptions  # noqa: E402
from homodyne_mpi.parallel import SerialComm  # noqa: E402

PLAIN_REFINE = nlsq_search.levenberg_marquardt
BUILT_DAMPING = nlsq_fit.SEARCHED_START_DAMPING


def accelerated_refine(evaluate, *args, **kwargs):
    """The search's refinement as before: with the fit's geodesic acceleration."""
    return PLAIN_REFINE(evaluate, *args, mixed_gradient=evaluate.mixed_gradient, **kwargs)


def one_fit(problem, points, options, *, accelerate: bool, damping: float) -> dict:
    """The full fit with the search's refinements ``accelerate``d or plain, starting at ``damping``."""
    refinements: list[int] = []

    def refine(*args, **kwargs):
        refined = (accelerated_refine if accelerate else PLAIN_REFINE)(*args, **kwargs)
        refinements.append(int(refined.iterations))
        return refined

    nlsq_search.levenberg_marquardt = refine
    nlsq_fit.SEARCHED_START_DAMPING = damping
    try:
        result = fit_nlsq(problem, points, SerialComm(), options)
    finally:
        nlsq_search.levenberg_marquardt, nlsq_fit.SEARCHED_START_DAMPING = PLAIN_REFINE, BUILT_DAMPING
    return {
        "refinement_iterations": refinements,
        "iterations": int(result.iterations),
        "rejected_steps": int(sum(not step["accepted"] for step in result.history)),
        "converged": bool(result.converged),
        "chi2": float(result.chi2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="laminar_flow/gaussian:6,laminar_flow/speckle:6,static/speckle:3")
    parser.add_argument("--output", default="bench_results/study_search_start.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="search_start_"))
    runs = []
    for case in args.cases.split(","):
        name, seeds = case.split(":")
        mode, noise = name.split("/")
        config = write_config(mode, 100, 20, workdir)
        for seed in range(int(seeds)):
            simulate(workdir, mode, np.array(TRUTH[mode]), PHI, 100, seed, noise)
            cfg = load_config(config)
            cfg.optimization.nlsq.uncertainty = "model"
            data = load_config_dataset(cfg)
            problem = build_problem(cfg, data)
            points = upper_triangle_points(data.c2, problem.noise_sigma)
            record = {"case": name, "seed": seed}
            for label, accelerate, damping in (
                ("built", False, BUILT_DAMPING),
                ("accelerated_search", True, BUILT_DAMPING),
                ("default_damping", False, LMOptions.initial_damping),
            ):
                record[label] = one_fit(problem, points, cfg.optimization.nlsq, accelerate=accelerate, damping=damping)
            print(record, flush=True)
            runs.append(record)
    write_json(
        args.output,
        {
            "benchmark": "start search and first damping",
            "command": " ".join(["python", *sys.argv]),
            "machine": machine(),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
