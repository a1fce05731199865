"""Inputs of the cost model in docs/performance.md, measured on this machine.

Usage: python scripts/bench_cost_model.py [--points 1e6] [--ranks 1,2,4] [--workdir DIR] [--output FILE]

- ``kernel``: points per second per core of one LM iteration (``bench_nlsq.kernel_rate``).
- ``allreduce``: seconds per ``Comm.allreduce_sum`` of the packed accumulator (and of
  larger buffers) under ``mpiexec -n R`` for each R, median of 200 calls after 20 warm-ups.
- ``read``: rank 0's rate reading and building points from the file
  (``PointSource`` row blocks -> ``stream_points``), points per second.
- ``fits``: ``homodyne-mpi run`` of the laminar data set on each R (``bench_scale.run_fit``):
  wall, fit phase, iterations, accumulate and Allreduce seconds.

Prints and writes JSON.
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
from bench_common import machine, single_core_environment, write_json  # noqa: E402
from bench_nlsq import kernel_rate  # noqa: E402
from bench_scale import make_dataset, run_fit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SIZES = (8, 3_200, 32_000, 320_000, 3_200_000)
"""Allreduce buffer sizes, bytes: 3.2 kB is the packed laminar accumulator of 6 angles."""


def allreduce_worker() -> None:
    """Under mpiexec: median seconds of ``allreduce_sum`` for each buffer size (root prints)."""
    import numpy as np

    from homodyne_mpi.parallel import MPIComm

    comm = MPIComm()
    medians = {}
    for size in SIZES:
        buffer = np.ones(size // 8)
        for _ in range(20):
            comm.allreduce_sum(buffer)
        times = []
        for _ in range(200):
            start = time.perf_counter()
            comm.allreduce_sum(buffer)
            times.append(time.perf_counter() - start)
        medians[size] = float(np.median(times))
    if comm.is_root:
        print(json.dumps(medians))


def allreduce_times(ranks: int) -> dict:
    """``allreduce_worker`` under ``mpiexec -n ranks``."""
    command = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, __file__, "--allreduce-worker"]
    completed = subprocess.run(command, capture_output=True, text=True, env=single_core_environment(), check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def read_rate(data: Path) -> dict:
    """Rank 0's streamed read: seconds and points per second for the whole file."""
    from homodyne_mpi.data.stream import PointSource

    start = time.perf_counter()
    n = 0
    with PointSource(data, wavevector_q=0.0054, dt=0.1) as source:
        sigma = source.noise_sigmas()
        noise_s = time.perf_counter() - start
        for block in source.point_blocks(sigma, 1_000_000):
            n += len(block)
    seconds = time.perf_counter() - start
    return {"points": n, "seconds": seconds, "noise_seconds": noise_s, "points_per_second": n / seconds,
            "file_bytes": data.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=float, default=1e6)
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "cost_model"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "cost_model.json"))
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker:
        allreduce_worker()
        return
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, config, _ = make_dataset(workdir, args.points)
    ranks = [int(r) for r in args.ranks.split(",")]
    document = {"machine": machine(), "load_average_at_start": load_average, "kernel": kernel_rate(),
                "allreduce_seconds": {r: allreduce_times(r) for r in ranks if r > 1}, "read": read_rate(data)}
    run_fit(config, max(ranks), workdir / "warmup")
    fits = {}
    for r in ranks:
        run = run_fit(config, r, workdir / f"fit_{r}")
        fits[r] = {key: run[key] for key in ("wall_s", "timing_s", "iterations", "converged", "within_3_std", "command")}
    document["fits"] = fits
    write_json(args.output, document)


if __name__ == "__main__":
    main()
