"""Jackknife benchmark: wall time of the frame-block jackknife on 1 and 2 ranks.

Usage: python scripts/bench_jackknife.py [--size 1e6] [--repeats 2] [--workdir DIR] [--output FILE]

``homodyne-mpi run`` of a simulated laminar-flow data set (6 angles, template defaults,
20 influence blocks) under ``mpiexec -n 1`` and ``-n 2``, the latter with each way of
spreading the refits (``jackknife_parallel``): ``replicates`` (each rank refits its own
blocks on a copy of all points) and ``points`` (all ranks on every refit). One XLA thread
per rank. Each configuration runs once to fill the compilation cache, then ``repeats``
times, alternating, and the median ``timing_s.jackknife`` is reported with the 2-to-1
ratios. Beside it, the machine's bound on any 2-rank speedup: the laminar kernel's
sustained rate in one process alone and the summed rate of two processes running it over
the same 10 seconds of wall time, measured before and after the jackknife runs.
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
from bench_nlsq import PHI, TRUTH, frames_for, make_dataset, run_fit  # noqa: E402

SUSTAINED_RATE = """
import json, sys, time
import numpy as np, jax, jax.numpy as jnp
from homodyne_mpi.model import ModelSpec, ParameterLayout, c2_grid
from homodyne_mpi.data.points import upper_triangle_points
from homodyne_mpi.nlsq.fit import device_block
from homodyne_mpi.nlsq.kernels import KernelSetup, chunk_terms
start_at, duration, n, truth, phi = json.loads(sys.argv[1])
spec = ModelSpec("laminar_flow", "paper", 0.0054, 0.1, n, gap=2e6)
layout = ParameterLayout("laminar_flow", len(phi))
theta = jnp.asarray(layout.join(np.full(len(phi), 0.3), np.ones(len(phi)), np.array(truth)))
phi = jnp.asarray(phi)
c2 = np.asarray(c2_grid(jnp.asarray(truth), jnp.full(len(phi), 0.3), jnp.ones(len(phi)), phi, spec))
points = upper_triangle_points(c2, np.full(len(phi), 0.01))
block = device_block(points, 8192)
compiled = chunk_terms.lower(theta, phi, jnp.arange(len(phi)), block, setup=KernelSetup(spec, layout)).compile()
jax.block_until_ready(compiled(theta, phi, jnp.arange(len(phi)), block))
time.sleep(max(0.0, start_at - time.time()))
began, calls = time.perf_counter(), 0
while time.perf_counter() - began < duration:
    jax.block_until_ready(compiled(theta, phi, jnp.arange(len(phi)), block))
    calls += 1
print(json.dumps(calls * len(points) / (time.perf_counter() - began)))
"""


def sustained_kernel_rates(processes: int, duration: float = 10.0, n_points: float = 1e6) -> list[float]:
    """Laminar-flow kernel rate (points/s) of each of ``processes`` processes that run it
    over the same ``duration`` seconds of wall time (one XLA thread each; all compile
    first and then start together at an agreed time)."""
    start_at = time.time() + 40.0  # room for every process to compile first
    argument = json.dumps([start_at, duration, frames_for(n_points), TRUTH, PHI])
    running = [
        subprocess.Popen(
            [sys.executable, "-c", SUSTAINED_RATE, argument], stdout=subprocess.PIPE, text=True, env=single_core_environment()
        )
        for _ in range(processes)
    ]
    rates = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError("kernel rate subprocess failed")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


def two_process_throughput() -> dict:
    """The machine's bound on a 2-rank speedup: the kernel's sustained rate in one process
    alone, and the sum of the rates of two processes running it at the same time."""
    alone = sustained_kernel_rates(1)[0]
    both = sustained_kernel_rates(2)
    return {"alone": alone, "each_of_two": both, "throughput_ratio_two_to_one": sum(both) / alone}


CASES = {"1_rank": (1, "points"), "2_ranks_replicates": (2, "replicates"), "2_ranks_points": (2, "points")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e6, help="points")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default="bench_results/nlsq_work")
    parser.add_argument("--output", default="bench_results/bench_jackknife.json")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = make_dataset(workdir, args.size)
    runs: dict[str, list[dict]] = {name: [] for name in CASES}
    throughput_before = two_process_throughput()
    print("two-process kernel throughput before:", throughput_before, flush=True)
    for name, (ranks, parallel) in CASES.items():
        run_fit(config, ranks, workdir / f"jk_warm_{name}", uncertainty="jackknife", nlsq={"jackknife_parallel": parallel})
    for _ in range(args.repeats):
        for name, (ranks, parallel) in CASES.items():
            run = run_fit(config, ranks, workdir / f"jk_{name}", uncertainty="jackknife", nlsq={"jackknife_parallel": parallel})
            runs[name].append(run)
            print(name, f"{run['timing_s']['jackknife']:.2f} s", run["jackknife"], flush=True)
    seconds = {name: statistics.median(r["timing_s"]["jackknife"] for r in rs) for name, rs in runs.items()}
    document = {
        "benchmark": "jackknife",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "n_points": runs["1_rank"][0]["n_points"],
        "jackknife_seconds_median": seconds,
        "ratio_2_to_1_replicates": seconds["2_ranks_replicates"] / seconds["1_rank"],
        "ratio_2_to_1_points": seconds["2_ranks_points"] / seconds["1_rank"],
        "kernel_laminar_two_processes": {"before": throughput_before, "after": two_process_throughput()},
        "runs": runs,
    }
    write_json(args.output, document)


if __name__ == "__main__":
    main()
