"""Jackknife benchmark: wall time of the frame-block jackknife on 1 and 2 ranks.

Usage: python scripts/bench_jackknife.py [--size 1e6] [--repeats 2] [--workdir DIR] [--output FILE]

``homodyne-mpi run`` of a simulated laminar-flow data set (6 angles, template defaults,
20 influence blocks) under ``mpiexec -n 1`` and ``-n 2``, the latter with each way of
spreading the refits (``jackknife_parallel``): ``replicates`` (each rank refits its own
blocks on a copy of all points) and ``points`` (all ranks on every refit). One XLA thread
per rank. Each configuration runs once to fill the compilation cache, then ``repeats``
times, alternating, and the median ``timing_s.jackknife`` is reported with the 2-to-1
ratios. Beside it, the machine's bound on any 2-rank speedup: the kernel's rate
(``bench_nlsq.kernel_rate``) in one process alone and in two processes at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_nlsq import kernel_rate, make_dataset, run_fit  # noqa: E402

def two_process_throughput() -> dict:
    """Laminar-flow kernel rate alone and in two concurrent processes (points/s)."""
    from concurrent.futures import ThreadPoolExecutor

    alone = kernel_rate()["laminar_flow"]["points_per_second_per_core"]
    with ThreadPoolExecutor(2) as pool:
        both = [r["laminar_flow"]["points_per_second_per_core"] for r in pool.map(lambda _: kernel_rate(), range(2))]
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
        "kernel_laminar_two_processes": two_process_throughput(),
        "runs": runs,
    }
    write_json(args.output, document)


if __name__ == "__main__":
    main()
