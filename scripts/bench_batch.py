"""Batch wall time on rank groups: 8 small data sets under mpiexec -n 4, groups of 1, 2 and 4.

Usage: python scripts/bench_batch.py [--datasets 8] [--frames 200] [--angles 4] [--ranks 4]
       [--group-sizes 1,2,4] [--repeats 1] [--workdir DIR] [--output FILE]

Simulates ``--datasets`` static data sets (noise seeds 1..K), fits them all with one
``homodyne-mpi run`` per group size (model uncertainty, plots off, compilation cache warm
after a first run), and records each run's wall time (the whole command, and the batch
loop from ``batch_summary.json``) and the largest difference of any fitted parameter
from the one-group run, in units of its standard error. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_data import bench_config, run_mpi, simulated_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_batch(workdir: Path, n_datasets: int, n_frames: int, n_angles: int) -> Path:
    """``n_datasets`` simulated static files (seeds 1..K) and one config listing them all."""
    import numpy as np

    phi = np.linspace(0.0, 90.0, n_angles)
    entries = [
        {
            "file_path": str(simulated_file(workdir / f"set{k}_{n_angles}x{n_frames}.h5", "static", n_frames, phi, seed=k + 1)),
            "name": f"set{k}",
        }
        for k in range(n_datasets)
    ]
    return bench_config(workdir / "batch.yaml", "static", n_frames, entries)


def run_batch(config: Path, ranks: int, group_size: int, out: Path) -> dict:
    """One ``homodyne-mpi run`` of the whole batch; wall times and every fitted value."""
    wall, _ = run_mpi(
        ranks, ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out), "--fresh", "--group-size", str(group_size)]
    )
    summary = json.loads((out / "batch_summary.json").read_text())
    fits = {}
    for entry in summary["datasets"]:
        result = json.loads((out / entry["name"] / "nlsq" / "result.json").read_text())
        fits[entry["name"]] = {name: (p["value"], p["std"]) for name, p in result["parameters"].items()}
    return {
        "group_size": group_size,
        "rank_groups": summary["rank_groups"],
        "wall_s": wall,
        "batch_wall_s": summary["wall_s"],
        "fits": fits,
        "command": " ".join(
            ["mpiexec", "-n", str(ranks), "python", "-m", "homodyne_mpi", "run", config.name, "--group-size", str(group_size)]
        ),
    }


def largest_difference(run: dict, reference: dict) -> float:
    """Largest |value - reference value| / reference std over every data set and parameter."""
    worst = 0.0
    for name, parameters in reference["fits"].items():
        for key, (value, std) in parameters.items():
            worst = max(worst, abs(run["fits"][name][key][0] - value) / max(std, 1e-300))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--angles", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--group-sizes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "batch"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "batch.json"))
    args = parser.parse_args()
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = make_batch(workdir, args.datasets, args.frames, args.angles)
    sizes = [int(s) for s in args.group_sizes.split(",")]
    run_batch(config, args.ranks, sizes[-1], workdir / "warmup")
    runs = []
    for repeat in range(args.repeats):
        for size in sizes:
            runs.append({"repeat": repeat, **run_batch(config, args.ranks, size, workdir / f"groups_of_{size}")})
    reference = next(run for run in runs if run["group_size"] == args.ranks)
    for run in runs:
        run["max_difference_in_std"] = largest_difference(run, reference)
        run["bitwise_equal_to_one_group"] = run["fits"] == reference["fits"]
        del run["fits"]
    n_points = args.angles * args.frames * (args.frames - 1) // 2
    write_json(
        args.output,
        {
            "machine": machine(),
            "load_average_at_start": load_average,
            "datasets": args.datasets,
            "points_per_dataset": n_points,
            "ranks": args.ranks,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
