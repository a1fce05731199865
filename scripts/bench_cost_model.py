"""Inputs of the cost model in docs/performance.md, measured on this machine.

Usage: python scripts/bench_cost_model.py [--points 1e6] [--ranks 1,2,4] [--workdir DIR] [--output FILE]

- ``kernel``: points per second per core of one LM iteration (``bench_nlsq.kernel_rate``).
- ``allreduce``: seconds per ``Comm.allreduce_sum`` of the packed accumulator (and of
  larger buffers) under ``mpiexec -n R`` for each R, median of 200 calls after 20 warm-ups.
- ``read``: rank 0's rate reading and building points from the file
  (``PointSource`` row blocks -> ``stream_points``), points per second.
- ``fits``: ``homodyne-mpi run`` of the laminar data set on each R (``bench_scale.run_fit``):
  wall, fit phase, iterations, accumulate and Allreduce seconds.

Prints and writes JSON. ``--predict`` prints instead the model's predicted efficiency and
batch times (docs/performance.md) from the constants in ``MODEL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_data import run_mpi  # noqa: E402
from bench_nlsq import kernel_rate  # noqa: E402
from bench_scale import make_dataset, run_fit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
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
    _, stdout = run_mpi(ranks, [__file__, "--allreduce-worker"])
    return json.loads(stdout.strip().splitlines()[-1])


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
    return {
        "points": n,
        "seconds": seconds,
        "noise_seconds": noise_s,
        "points_per_second": n / seconds,
        "file_bytes": data.stat().st_size,
    }


MODEL = {
    "fixed_s": 3.0,  # imports + set-up + compile (warm cache) + exit of one job, measured 2.5-4.4 s
    "kernel_points_per_s": 1.36e7,  # laminar, per core, idle machine (bench_nlsq, 2026-11-30)
    "evaluations": 24,  # 20 LM iterations + the start search (~4 full-data equivalents), 1e7 laminar
    "allreduce_stage_s": 18e-6,  # 3.2 kB Allreduce on 2 ranks here; one stage per doubling of ranks
    "root_points_per_s": 3.6e6,  # rank 0 read + noise + streamed scatter, 1e7 points on 2 ranks
}
"""Cost-model constants (measured here; see docs/performance.md for the commands)."""


def job_seconds(points: float, ranks: int, model: dict = MODEL, parallel_read: bool = False) -> float:
    """Predicted wall time of one data set of ``points`` on ``ranks`` ranks (one group).

    ``parallel_read``: every rank reads its own rows at rank 0's rate (not built yet).
    """
    stages = int(np.ceil(np.log2(ranks))) if ranks > 1 else 0
    per_evaluation = points / (ranks * model["kernel_points_per_s"]) + stages * model["allreduce_stage_s"]
    readers = ranks if parallel_read else 1
    return model["fixed_s"] + points / (readers * model["root_points_per_s"]) + model["evaluations"] * per_evaluation


def batch_seconds(points: float, datasets: int, ranks: int, group: int) -> float:
    """Predicted wall time of ``datasets`` equal data sets on ``ranks`` ranks in groups of ``group``."""
    return int(np.ceil(datasets / max(ranks // group, 1))) * job_seconds(points, group)


def predict() -> None:
    """Markdown tables of the predicted efficiency and batch times."""
    for parallel_read in (False, True):
        print(f"reading: {'every rank its own rows' if parallel_read else 'rank 0 streams to all'}")
        print("| points | " + " | ".join(f"{r} ranks" for r in (1, 16, 256, 1024)) + " |")
        print("|---|---|---|---|---|")
        for points in (1e7, 1e8, 1e9):
            cells = []
            for ranks in (1, 16, 256, 1024):
                wall = job_seconds(points, ranks, parallel_read=parallel_read)
                cells.append(f"{wall:.3g} s (E {job_seconds(points, 1) / (ranks * wall):.2f})")
            print(f"| {points:.0e} | " + " | ".join(cells) + " |")
        print()
    from homodyne_mpi.parallel.groups import plan_groups

    print("| batch on 256 ranks | groups of 1 | 16 | 256 (one group) | automatic |")
    print("|---|---|---|---|---|")
    for points, datasets in ((1e7, 100), (1e8, 100), (1e9, 4)):
        cells = [f"{batch_seconds(points, datasets, 256, g):.3g} s" for g in (1, 16, 256)]
        plan = plan_groups(256, [int(points)] * datasets)
        auto = max(len(d) * job_seconds(points, r) for r, d in zip(plan.rank_counts, plan.datasets))
        cells.append(f"{auto:.3g} s ({plan.n_groups} groups of {min(plan.rank_counts)}-{max(plan.rank_counts)})")
        print(f"| {datasets} x {points:.0e} points | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=float, default=1e6)
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "cost_model"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "cost_model.json"))
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--predict", action="store_true", help="print the model's predictions (no measurement)")
    args = parser.parse_args()
    if args.predict:
        predict()
        return
    if args.allreduce_worker:
        allreduce_worker()
        return
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, config, _ = make_dataset(workdir, args.points)
    ranks = [int(r) for r in args.ranks.split(",")]
    document = {
        "machine": machine(),
        "load_average_at_start": load_average,
        "kernel": kernel_rate(),
        "allreduce_seconds": {r: allreduce_times(r) for r in ranks if r > 1},
        "read": read_rate(data),
    }
    run_fit(config, max(ranks), workdir / "warmup")
    fits = {}
    for r in ranks:
        run = run_fit(config, r, workdir / f"fit_{r}")
        fits[r] = {key: run[key] for key in ("wall_s", "timing_s", "iterations", "converged", "within_3_std", "command")}
    document["fits"] = fits
    write_json(args.output, document)


if __name__ == "__main__":
    main()
