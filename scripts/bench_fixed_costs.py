"""Where the time of a warm single-rank job goes: 1e6-point static data, jackknife on.

Usage: python scripts/bench_fixed_costs.py [--repeats 3] [--workdir DIR] [--output FILE] [--passes-both-ways]
                                          [--baseline DIR] [--default-threads] [--frame-shared]

Simulates a static data set of 6 angles x 578 frames (1,000,518 upper-triangle points,
sigma 0.02) once, runs ``homodyne-mpi run`` on it once to fill the compilation cache,
then ``--repeats`` more times (one process, no mpiexec, one XLA thread, plots off; the CLI
runs inside a small wrapper that notes the wall clock between phases) and splits each
run's wall time into: Python start-up, imports (JAX and the package), set-up (config,
devices, compilation cache), the stages the job times itself (``result.json``
``timing_s``: load, compile, start search, LM fit, jackknife, profile check), the rest of the batch loop
(writing ``fit.h5`` and waiting for it) and process exit, with the jackknife's passes
over the data (``result.json`` ``jackknife.passes``). Prints and writes JSON.

``--baseline DIR`` (a git worktree of other code, for example ``git worktree add
/tmp/base <commit>``) runs that code's job after each of this code's, in the same
minutes, and reports both (``baseline``).

``--default-threads`` runs, after each of those jobs, the same job with XLA's default
threading (every core, as a user's job runs) and reports it (``default_threads``).

``--frame-shared`` runs, after each of those jobs, the same job with
``optimization.nlsq.noise_model: frame_shared`` (generalised least squares instead of the
jackknife; its ``frame_noise`` stage) and reports it (``frame_shared``).

``--passes-both-ways`` adds, in this process, one fit of the same data followed by the
jackknife with the shared first pass and with each refit making its own first pass
(``run_jackknife(..., shared_first_pass=False)``): the passes and seconds of each, and
the largest replicate difference in model std.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, single_core_environment, write_json  # noqa: E402
from bench_data import bench_config, simulated_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N_FRAMES = 578
STAGES = ("load", "compile", "start_search", "fit", "jackknife", "profile_check", "frame_noise")


def make_dataset(workdir: Path) -> Path:
    """The static 1e6-point file and its config (jackknife on, plots off, cache in ``workdir``)."""
    data = simulated_file(workdir / f"static_{N_FRAMES}.h5", "static", N_FRAMES)
    return bench_config(workdir / "static_1e6.yaml", "static", N_FRAMES, data, uncertainty="jackknife")


WRAPPER = """
import json, os, sys, time
marks = {"python_up": time.time()}
from homodyne_mpi.parallel.devices import configure_host_devices
configure_host_devices(4)  # as the CLI does for the template's 4 chains, before JAX loads
import homodyne_mpi.pipeline as pipeline
marks["imported"] = time.time()
original = pipeline.BatchRunner.run
def run(self):
    marks["batch_start"] = time.time()
    try:
        return original(self)
    finally:
        marks["batch_end"] = time.time()
pipeline.BatchRunner.run = run
from homodyne_mpi.cli import main
code = main(sys.argv[1:])
marks["main_returned"] = time.time()
print("MARKS " + json.dumps(marks), flush=True)
try:
    from homodyne_mpi.parallel.entry import exit_process  # as the homodyne-mpi command ends
except ImportError:  # code from before exit_process (A/B runs): the interpreter's own exit
    exit_process = sys.exit
exit_process(code)
"""
"""Runs the CLI in one process and prints wall-clock marks of its phases."""


def frame_shared_config(config: Path) -> Path:
    """A copy of ``config`` with ``optimization.nlsq.noise_model: frame_shared`` (results in their own folder)."""
    import yaml

    document = yaml.safe_load(config.read_text())
    document["optimization"]["nlsq"]["noise_model"] = "frame_shared"
    path = config.with_name(config.stem + "_frame_shared.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def one_job(config: Path, out: Path, source_tree: str | None = None, *, one_thread: bool = True) -> dict:
    """One warm job: its phases by wall clock and the stages it timed itself.

    ``source_tree``: run the package found in that folder (a checkout of other code)
    instead of the installed one; the job then starts in ``out``, so that the current
    folder's package cannot shadow it. ``one_thread``: XLA held to one thread (else
    XLA's own default, as a user's job runs).
    """
    command = [sys.executable, "-c", WRAPPER, "run", str(config), "--output-dir", str(out), "--fresh"]
    env = single_core_environment() if one_thread else dict(os.environ)
    if source_tree is not None:
        env["PYTHONPATH"] = str(Path(source_tree).resolve())
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out)
    end = time.time()
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    marks = json.loads(next(line for line in completed.stdout.splitlines() if line.startswith("MARKS "))[6:])
    result = json.loads(next(out.glob("*/nlsq/result.json")).read_text())
    stages = {name: result["timing_s"].get(name, 0.0) for name in STAGES}
    phases = {
        "python_start_s": marks["python_up"] - start,
        "imports_s": marks["imported"] - marks["python_up"],
        "setup_s": marks["batch_start"] - marks["imported"],
        **stages,
        "batch_rest_s": marks["batch_end"] - marks["batch_start"] - sum(stages.values()),
        "exit_s": end - marks["batch_end"],
    }
    return {
        "wall_s": end - start,
        "phases_s": phases,
        "iterations": result["iterations"],
        "jackknife_refits": result["jackknife"]["blocks"] if result.get("jackknife") else 0,
        "jackknife_passes": (result.get("jackknife") or {}).get("passes"),
        "frame_noise_passes": (result.get("frame_noise") or {}).get("passes"),
    }


def passes_both_ways(config: Path) -> dict:
    """One fit, then the jackknife with and without the shared first pass (same fit, this process)."""
    import numpy as np

    from homodyne_mpi.config import load_config
    from homodyne_mpi.data.loader import load_config_dataset
    from homodyne_mpi.data.points import upper_triangle_points
    from homodyne_mpi.nlsq import build_problem, fit_nlsq
    from homodyne_mpi.nlsq.jackknife import run_jackknife
    from homodyne_mpi.parallel import SerialComm

    cfg = load_config(config)
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    result = fit_nlsq(problem, upper_triangle_points(data.c2, problem.noise_sigma), SerialComm(), cfg.optimization.nlsq)
    run_jackknife(result, problem, cfg.optimization.nlsq)  # compiles the shared pass
    shared = run_jackknife(result, problem, cfg.optimization.nlsq)
    own = run_jackknife(result, problem, cfg.optimization.nlsq, shared_first_pass=False)
    scale = np.where(result.std > 0, result.std, 1.0)
    return {
        "passes_shared_first_pass": shared.passes,
        "passes_own_first_pass": own.passes,
        "seconds_shared_first_pass": shared.seconds,
        "seconds_own_first_pass": own.seconds,
        "refits_converged": int(shared.converged.sum()),
        "max_replicate_difference_in_model_std": float(np.max(np.abs(shared.replicates - own.replicates) / scale)),
    }


def summary(runs: list[dict]) -> dict:
    """Median wall time and median of each phase over ``runs``."""
    return {
        "wall_s_median": statistics.median(run["wall_s"] for run in runs),
        "phases_s_median": {name: statistics.median(run["phases_s"][name] for run in runs) for name in runs[0]["phases_s"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "fixed_costs"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "fixed_costs.json"))
    parser.add_argument(
        "--passes-both-ways", action="store_true", help="also compare the jackknife with and without the shared pass"
    )
    parser.add_argument(
        "--baseline", metavar="DIR", help="a checkout of other code (git worktree) whose jobs alternate with this code's"
    )
    parser.add_argument(
        "--default-threads",
        action="store_true",
        help="also run each job with XLA's default threads (all cores, as a user's job), alternating with the one-thread job",
    )
    parser.add_argument(
        "--frame-shared",
        action="store_true",
        help="also run each job with noise_model: frame_shared (GLS, no jackknife), alternating with the default job",
    )
    args = parser.parse_args()
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = make_dataset(workdir).resolve()
    out = (workdir / "out").resolve()
    one_job(config, out)  # fills the compilation cache
    baseline_runs = []
    if args.baseline:
        one_job(config, out, args.baseline)  # the baseline's kernels may differ: fill the cache for them too
    shared_config = frame_shared_config(config) if args.frame_shared else None
    if shared_config is not None:
        one_job(shared_config, workdir / "out_frame_shared")  # its kernels into the cache
    runs, default_thread_runs, frame_shared_runs = [], [], []
    for _ in range(args.repeats):  # alternating, so that both see the same machine
        runs.append(one_job(config, out))
        if args.baseline:
            baseline_runs.append(one_job(config, out, args.baseline))
        if args.default_threads:
            default_thread_runs.append(one_job(config, out, one_thread=False))
        if shared_config is not None:
            frame_shared_runs.append(one_job(shared_config, (workdir / "out_frame_shared").resolve()))
    write_json(
        args.output,
        {
            "machine": machine(),
            "load_average_at_start": load_average,
            "n_points": 6 * N_FRAMES * (N_FRAMES - 1) // 2,
            "command": f"{Path(sys.executable).name} -m homodyne_mpi run {config.name} --fresh (warm cache, 1 XLA thread)",
            **summary(runs),
            "runs": runs,
            **(
                {"baseline": {"source_tree": args.baseline, **summary(baseline_runs), "runs": baseline_runs}}
                if args.baseline
                else {}
            ),
            **(
                {"default_threads": {**summary(default_thread_runs), "runs": default_thread_runs}} if args.default_threads else {}
            ),
            **({"frame_shared": {**summary(frame_shared_runs), "runs": frame_shared_runs}} if shared_config else {}),
            **({"jackknife_both_ways": passes_both_ways(config)} if args.passes_both_ways else {}),
        },
    )


if __name__ == "__main__":
    main()
