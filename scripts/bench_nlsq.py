"""NLSQ benchmark: kernel rate per core, full laminar fits at 1e6 and 1e7 points, 1 vs 2 ranks.

Usage: python scripts/bench_nlsq.py [--sizes 1e6,1e7] [--workdir DIR] [--output FILE]

- Kernel: points per second per core of one LM iteration (Jacobian rows + J^T J, J^T r,
  chi2 accumulation) on real upper-triangle points, XLA held to one thread.
- Fits: ``homodyne-mpi run`` under ``mpiexec -n 1`` and ``-n 2`` (one XLA thread per
  rank) on simulated laminar-flow data started from the template defaults; reports
  wall, compile, start-search and fit seconds, the 1 -> 2 rank speedup of the fit, and
  per-rank peak memory next to the size of that rank's points (two chunk sizes at the
  largest size, to show what the working memory depends on); and at the smallest size
  the frame-block jackknife's wall time on 1 and 2 ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import SINGLE_CORE_XLA_FLAGS, machine, single_core_environment, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]


def frames_for(n_points: float, n_angles: int = 6) -> int:
    """Frames N with n_angles * N (N-1) / 2 closest to n_points."""
    target = n_points / n_angles
    n = int((1 + (1 + 8 * target) ** 0.5) / 2)
    return n if abs(n * (n - 1) / 2 - target) <= abs((n + 1) * n / 2 - target) else n + 1


def kernel_rate() -> dict:
    """One LM iteration's accumulation, in a subprocess with a single XLA thread."""
    code = f"""
import json, numpy as np, jax, jax.numpy as jnp, time
from homodyne_mpi.model import ModelSpec, ParameterLayout, c2_grid
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.nlsq.fit import device_block
from homodyne_mpi.nlsq.kernels import KernelSetup, chunk_terms
out = {{}}
for mode in ("static", "laminar_flow"):
    n = {frames_for(1e6)}
    spec = ModelSpec(mode, "paper", 0.0054, 0.1, n, gap=2e6)
    layout = ParameterLayout(mode, 6)
    physical = np.array({TRUTH})[: spec.n_physical]
    theta = jnp.asarray(layout.join(np.full(6, 0.3), np.ones(6), physical))
    phi = jnp.asarray({PHI})
    c2 = np.asarray(c2_grid(jnp.asarray(physical), jnp.full(6, 0.3), jnp.ones(6), phi, spec))
    points = upper_triangle_points(c2, np.full(6, 0.01))
    setup = KernelSetup(spec, layout)
    block = device_block(points, 8192)
    compiled = chunk_terms.lower(theta, phi, jnp.arange(6), block, setup=setup).compile()
    jax.block_until_ready(compiled(theta, phi, jnp.arange(6), block))
    best = min((lambda t0: (jax.block_until_ready(compiled(theta, phi, jnp.arange(6), block)), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    out[mode] = {{"points": len(points), "seconds_per_iteration": best, "points_per_second_per_core": len(points) / best}}
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=single_core_environment(), check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_dataset(workdir: Path, n_points: float) -> Path:
    """Simulated laminar-flow file and a config with template starting values."""
    import yaml

    from homodyne_mpi.config import render_template
    from homodyne_mpi.data.simulate import simulate_dataset

    n_frames = frames_for(n_points)
    data = workdir / f"laminar_{n_frames}.h5"
    if not data.exists():
        simulate_dataset(
            data,
            mode="laminar_flow",
            shear_form="paper",
            q=0.0054,
            dt=0.1,
            n_frames=n_frames,
            gap=2e6,
            physical=TRUTH,
            contrast=0.3,
            offset=1.0,
            phi=PHI,
            noise_sigma=0.02,
            seed=1,
        )
    config = yaml.safe_load(render_template("laminar_flow"))
    config["analyzer_parameters"].update({"dt": 0.1, "end_frame": n_frames})
    config["experimental_data"]["file_path"] = str(data)
    config["phi_filtering"]["enabled"] = False
    config["compute"]["compilation_cache_dir"] = str(workdir / "jax_cache")
    path = workdir / f"laminar_{n_frames}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_fit(
    config: Path, ranks: int, out: Path, chunk_size: int | None = None, uncertainty: str = "model", nlsq: dict | None = None
) -> dict:
    """One ``homodyne-mpi run`` under mpiexec; returns timings, memory and the outcome.

    ``nlsq`` sets further ``optimization.nlsq`` options.
    """
    import yaml

    document = yaml.safe_load(config.read_text())
    document["optimization"]["nlsq"]["uncertainty"] = uncertainty
    document["optimization"]["nlsq"].update(nlsq or {})
    if chunk_size is not None:
        document["optimization"]["nlsq"]["chunk_size"] = chunk_size
    extra = "".join(f"_{value}" for value in (nlsq or {}).values())
    config = config.with_name(f"{config.stem}_chunk{chunk_size or 'default'}_{uncertainty}{extra}.yaml")
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    command = [
        str(BIN / "mpiexec"),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "homodyne_mpi",
        "run",
        str(config),
        "--output-dir",
        str(out),
        "--fresh",
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=single_core_environment())
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    result = json.loads(next(out.glob("*/nlsq/result.json")).read_text())
    return {
        "ranks": ranks,
        "jackknife": result["jackknife"],
        "n_points": result["n_points"],
        "converged": result["converged"],
        "iterations": result["iterations"],
        "wall_s": wall,
        "timing_s": result["timing_s"],
        "memory": result["memory"],
        "command": " ".join(command[:4] + ["-m", "homodyne_mpi", "run", config.name]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated point counts")
    parser.add_argument("--workdir", default="bench_results/nlsq_work")
    parser.add_argument("--output", default="bench_results/bench_nlsq.json")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "NLSQ",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "xla_flags_per_rank": SINGLE_CORE_XLA_FLAGS,
        "kernel": kernel_rate(),
        "fits": {},
    }
    sizes = [float(s) for s in args.sizes.split(",")]
    for size in sizes:
        config = make_dataset(workdir, size)
        runs = {}
        for ranks in (1, 2):
            run_fit(config, ranks, workdir / f"warm_{size:g}_{ranks}")  # fills the compilation cache
            runs[ranks] = run_fit(config, ranks, workdir / f"out_{size:g}_{ranks}")
        entry = {
            "runs": runs,
            "fit_speedup_1_to_2_ranks": runs[1]["timing_s"]["fit"] / runs[2]["timing_s"]["fit"],
            "wall_speedup_1_to_2_ranks": runs[1]["wall_s"] / runs[2]["wall_s"],
        }
        if size == max(sizes):
            entry["chunk_65536_2_ranks"] = run_fit(config, 2, workdir / f"out_{size:g}_chunk", chunk_size=65536)
        if size == min(sizes):
            jackknife = {
                ranks: run_fit(config, ranks, workdir / f"jk_{size:g}_{ranks}", uncertainty="jackknife") for ranks in (1, 2)
            }
            entry["jackknife"] = {
                "seconds_1_rank": jackknife[1]["timing_s"]["jackknife"],
                "seconds_2_ranks": jackknife[2]["timing_s"]["jackknife"],
                "ratio_2_to_1": jackknife[2]["timing_s"]["jackknife"] / jackknife[1]["timing_s"]["jackknife"],
            }
        document["fits"][f"{size:g}"] = entry
    write_json(args.output, document)


if __name__ == "__main__":
    main()
