"""Study: how close the jackknife refits come to their optimum under a stopping rule.

Usage: python scripts/study_refit_finish.py [--cases static_1e6,laminar_gaussian,laminar_speckle]
           [--seeds 7] [--first-seed 0] [--frames 100] [--blocks 20]
           [--rules 0.2:0.25:0.01:0.001,...] [--workdir DIR] [--output FILE]

Each case is fitted once (``fit_nlsq``, one process), then its jackknife is run under
several refit stopping rules on the same fit (``run_jackknife(..., distance=, finish=,
finish_distance=, contraction=, drift=)``):

- ``reference``: no finish step, local optimum within 1e-6 model std (``reference_1e-4``:
  1e-4; a refit that stops there after two steps is still up to 3e-5 model std from its
  optimum on the static case, more than the finished refits, so the stricter reference);
- ``today``: no finish step, 0.01 model std (the rule before the Newton finish);
- each of ``--rules``, ``D:C:X:F``: the Newton finish once the local optimum is within ``D``
  model std, if the finish step is at most ``C`` times the last step and the variances are
  predicted to move by at most ``X`` (0: not checked); else on to ``F`` model std
  (``finish_D_cC_xX_else_F``; ``0.2:0.25:0.01:0.001`` is the default rule).

Per rule: the jackknife's passes over the data and seconds, the converged refits, the
largest difference of a replicate from the reference's (over the refits converged under
both, in model std ``result.std``, every free parameter) and the largest relative change
of the jackknife std against the reference's; ``worst`` holds the largest of each over the cases.

Cases: ``static_1e6`` is the data set of ``bench_fixed_costs.py`` (static, 6 angles x 578
frames, 1,000,518 points, sigma 0.02; in ``--workdir``); ``laminar_gaussian`` and
``laminar_speckle`` are the laminar-flow data sets of ``bench_uncertainty.py`` (6 angles,
``--frames`` frames, sigma 0.01; speckle adds per-frame terms of the same size), seeds
``--first-seed`` on, from the template defaults with ``--blocks`` jackknife blocks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import bench_uncertainty as bench  # noqa: E402  (configures one host device on import)
import numpy as np  # noqa: E402
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.config import load_config  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.nlsq import build_problem, fit_nlsq  # noqa: E402
from homodyne_mpi.nlsq.jackknife import run_jackknife  # noqa: E402
from homodyne_mpi.parallel import SerialComm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RULES = "0.2:0.25:0.01:0.001,0.1:0.25:0.01:0.001,0.3:0.25:0.01:0.001,0.2:0.25:0:0.001,0.2:inf:0:0.01"
"""The default rule, its finish distance halved and raised, without the drift check, and the bare finish."""


def fitted(config: Path):
    """``(problem, result, options)`` of the config at ``config``: the plain fit, its objective kept."""
    cfg = load_config(config)
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    result = fit_nlsq(problem, upper_triangle_points(data.c2, problem.noise_sigma), SerialComm(), cfg.optimization.nlsq)
    return problem, result, cfg.optimization.nlsq


def compare(result, problem, options, rules: list[tuple[float, float, float, float]]) -> dict:
    """Every rule's jackknife on the fit ``result``, measured against the reference rule."""
    plain = {"reference": (1e-6, False, 0.0, 0.0, 1e-6), "reference_1e-4": (1e-4, False, 0.0, 0.0, 1e-4)}
    plain["today"] = (0.01, False, 0.0, 0.0, 0.01)
    finished = {f"finish_{d:g}_c{c:g}_x{x:g}_else_{f:g}": (d, True, c, x, f) for d, c, x, f in rules}
    run_jackknife(result, problem, options, distance=0.01, finish=False)  # compiles the shared pass
    runs = {}
    for name, (d, finish, c, x, fallback) in {**plain, **finished}.items():
        runs[name] = run_jackknife(
            result, problem, options, distance=fallback, finish=finish, finish_distance=d, contraction=c, drift=x
        )
    described = {**plain, **finished}
    reference = runs["reference"]
    scale = np.where(result.std > 0, result.std, 1.0)
    free = result.std > 0
    rows = {}
    for name, run in runs.items():
        both = run.converged & reference.converged
        difference = np.abs(run.replicates - reference.replicates)[both][:, free] / scale[free]
        moved = reference.std > 0
        relative_std = np.abs(run.std[moved] / reference.std[moved] - 1.0)
        rows[name] = {
            "finish": described[name][1],
            "distance": described[name][4],
            **(
                {"finish_distance": described[name][0], "contraction": described[name][2], "drift": described[name][3]}
                if described[name][1]
                else {}
            ),
            "passes": run.passes,
            "seconds": run.seconds,
            "converged": int(run.converged.sum()),
            "blocks": len(run.converged),
            "max_replicate_difference_model_std": float(difference.max(initial=0.0)),
            "max_relative_std_change": float(relative_std.max(initial=0.0)),
        }
    return rows


def static_case(workdir: Path) -> Path:
    """The config of ``bench_fixed_costs.py``'s static 1e6-point data (made in ``workdir`` if missing)."""
    import bench_fixed_costs

    return bench_fixed_costs.make_dataset(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="static_1e6,laminar_gaussian,laminar_speckle")
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--rules", default=DEFAULT_RULES)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "fixed_costs"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "study_refit_finish.json"))
    args = parser.parse_args()
    rules = [tuple(float(v) for v in rule.split(":")) for rule in args.rules.split(",")]
    started = time.time()
    cases = {}
    for case in args.cases.split(","):
        if case == "static_1e6":
            problem, result, options = fitted(static_case(Path(args.workdir)))
            cases[case] = compare(result, problem, options, rules)
            print(case, cases[case], flush=True)
            continue
        noise = case.removeprefix("laminar_")
        with tempfile.TemporaryDirectory() as folder:
            workdir = Path(folder)
            config = bench.write_config("laminar_flow", args.frames, args.blocks, workdir)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                mode = "laminar_flow"
                bench.simulate(workdir, mode, np.array(bench.TRUTH[mode]), bench.PHI, args.frames, seed, noise)
                problem, result, options = fitted(config)
                cases[f"{case}_seed{seed}"] = compare(result, problem, options, rules)
                print(f"{case}_seed{seed}", cases[f"{case}_seed{seed}"], flush=True)
    worst = {}
    replicate, std = "max_replicate_difference_model_std", "max_relative_std_change"
    for rule in next(iter(cases.values())):
        worst[rule] = {
            replicate: max(c[rule][replicate] for c in cases.values()),
            std: max(c[rule][std] for c in cases.values()),
            "cases_closer_than_today": {  # per case: at most today's difference
                replicate: sum(c[rule][replicate] <= c["today"][replicate] for c in cases.values()),
                std: sum(c[rule][std] <= c["today"][std] for c in cases.values()),
                "of": len(cases),
            },
            "passes_total": sum(c[rule]["passes"] for c in cases.values()),
        }
    write_json(
        args.output,
        {"machine": machine(), "seconds": time.time() - started, "args": vars(args), "worst": worst, "cases": cases},
    )


if __name__ == "__main__":
    main()
