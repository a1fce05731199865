"""Where the time of a warm single-rank job goes: 1e6-point static data, jackknife on.

Usage: python scripts/bench_fixed_costs.py [--repeats 3] [--workdir DIR] [--output FILE]

Simulates a static data set of 6 angles x 578 frames (1,000,518 upper-triangle points,
sigma 0.02) once, runs ``homodyne-mpi run`` on it once to fill the compilation cache,
then ``--repeats`` more times (one process, no mpiexec, one XLA thread, plots off) and
splits each run's wall time into: Python start-up and imports (``python -c "import jax,
homodyne_mpi.pipeline"`` timed alone), the stages the job times itself (``result.json``
``timing_s``: load, compile, start search, LM fit, jackknife) and the rest (writing
``fit.h5`` and waiting for it, process exit). Prints and writes JSON.
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

REPO = Path(__file__).resolve().parent.parent
TRUTH = [8000.0, -0.3, 30.0]
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
N_FRAMES = 578
STAGES = ("load", "compile", "start_search", "fit", "jackknife")


def make_dataset(workdir: Path) -> Path:
    """The static 1e6-point file and its config (jackknife on, plots off, cache in ``workdir``)."""
    import yaml

    from homodyne_mpi.config import render_template
    from homodyne_mpi.data.simulate import simulate_dataset

    data = workdir / f"static_{N_FRAMES}.h5"
    if not data.exists():
        simulate_dataset(data, mode="static", shear_form="paper", q=0.0054, dt=0.1, n_frames=N_FRAMES, gap=2e6,
                         physical=TRUTH, contrast=0.3, offset=1.0, phi=PHI, noise_sigma=0.02, seed=1)
    config = yaml.safe_load(render_template("static"))
    config["analyzer_parameters"].update({"dt": 0.1, "end_frame": N_FRAMES})
    config["experimental_data"]["file_path"] = str(data)
    config["phi_filtering"]["enabled"] = False
    config["compute"]["compilation_cache_dir"] = str(workdir / "jax_cache")
    config["optimization"]["nlsq"]["uncertainty"] = "jackknife"
    config["output"]["plots"] = False
    path = workdir / "static_1e6.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed(command: list[str]) -> float:
    """Wall seconds of one subprocess (single XLA thread); raises on failure."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=single_core_environment())
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    return time.perf_counter() - start


def one_job(config: Path, out: Path) -> dict:
    """One warm job: its wall time and the stages it timed itself."""
    wall = timed([sys.executable, "-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out), "--fresh"])
    result = json.loads(next(out.glob("*/nlsq/result.json")).read_text())
    batch = json.loads((out / "batch_summary.json").read_text())
    stages = {name: result["timing_s"].get(name, 0.0) for name in STAGES}
    return {"wall_s": wall, "batch_wall_s": batch["wall_s"], "stages_s": stages, "iterations": result["iterations"],
            "jackknife_refits": result["jackknife"]["blocks"] if result.get("jackknife") else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "fixed_costs"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "fixed_costs.json"))
    args = parser.parse_args()
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = make_dataset(workdir)
    one_job(config, workdir / "out")  # fills the compilation cache
    imports = [timed([sys.executable, "-c", "import jax, homodyne_mpi.pipeline"]) for _ in range(args.repeats)]
    bare = [timed([sys.executable, "-c", "pass"]) for _ in range(args.repeats)]
    runs = [one_job(config, workdir / "out") for _ in range(args.repeats)]
    median = {name: statistics.median(run["stages_s"][name] for run in runs) for name in STAGES}
    wall = statistics.median(run["wall_s"] for run in runs)
    startup = statistics.median(imports)
    breakdown = {"python_start_s": statistics.median(bare), "imports_s": startup - statistics.median(bare), **median}
    breakdown["rest_s"] = wall - startup - sum(median.values())
    write_json(args.output, {
        "machine": machine(),
        "load_average_at_start": load_average,
        "n_points": 6 * N_FRAMES * (N_FRAMES - 1) // 2,
        "command": f"{Path(sys.executable).name} -m homodyne_mpi run {config.name} --fresh (warm cache, 1 XLA thread)",
        "wall_s_median": wall,
        "breakdown_s_median": breakdown,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
