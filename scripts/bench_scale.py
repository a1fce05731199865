"""Memory at scale: every rank's peak RSS against its point block, loaded vs streamed.

Usage: python scripts/bench_scale.py [--points 1e7] [--ranks 2] [--block-points 1e6]
       [--workdir DIR] [--output FILE] [--skip-fit] [--no-warmup] [--fit-paths streamed,loaded]
       [--skip-distribution]

1. Simulates a laminar-flow data set (6 angles, sigma 0.02, seed 1) to an HDF5 file, row
   block by row block (``simulate_dataset``), so the simulation never holds a matrix.
2. **fit** (unless ``--skip-fit``): ``homodyne-mpi run`` under ``mpiexec -n RANKS`` (model
   uncertainty, plots off, one XLA thread per rank, warm compilation cache): the fit's wall
   time and iterations, whether every physical parameter lies within 3 std of the truth,
   and each rank's peak RSS and point-block bytes from ``result.json`` ``memory``; once
   per ``--fit-paths`` entry: ``streamed`` (``compute.stream_points: true``: rank 0 streams
   row blocks to the ranks and writes ``fit.h5`` by row blocks) and ``loaded``
   (``compute.stream_points: false``: rank 0 reads every matrix and builds all points).
3. **streamed distribution**: the same ranks, in a worker run of this script, after
   importing JAX (its runtime is part of every rank's memory): rank 0 opens the file with
   ``data.stream.PointSource``, estimates the noise from sampled row pairs and streams the
   points in blocks of at most ``--block-points`` points into every rank's share
   (``parallel.scatter.scatter_point_stream``); each rank then reports its peak RSS and
   its share's bytes. The same worker with ``--loaded`` does what the fit path does
   (``load_xpcs`` + ``upper_triangle_points`` on rank 0, then ``Comm.scatter_rows``).

Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_data import PHI, TRUTH, bench_config, run_mpi, simulated_file  # noqa: E402
from bench_nlsq import frames_for  # noqa: E402

from homodyne_mpi.vocabulary import PHYSICAL_PARAMETERS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHYSICAL_NAMES = list(PHYSICAL_PARAMETERS["laminar_flow"])


def make_dataset(workdir: Path, n_points: float) -> tuple[Path, Path, int]:
    """The simulated laminar file (reused when present) and a config for it; returns ``(file, config, frames)``."""
    n_frames = frames_for(n_points)
    data = simulated_file(workdir / f"laminar_{n_frames}.h5", "laminar_flow", n_frames)
    return data, bench_config(workdir / f"laminar_{n_frames}.yaml", "laminar_flow", n_frames, data), n_frames


def path_config(config: Path, path: str) -> Path:
    """A copy of ``config`` with ``compute.stream_points`` set for the fit path ``streamed`` or ``loaded``."""
    import yaml

    document = yaml.safe_load(config.read_text())
    document["compute"]["stream_points"] = path == "streamed"
    variant = config.with_name(f"{config.stem}_{path}.yaml")
    variant.write_text(yaml.safe_dump(document, sort_keys=False))
    return variant


def run_fit(config: Path, ranks: int, out: Path) -> dict:
    """One ``homodyne-mpi run``: wall, iterations, truth within 3 std, memory per rank."""
    wall, _ = run_mpi(ranks, ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out), "--fresh"])
    result = json.loads(next(out.glob("*/nlsq/result.json")).read_text())
    within = {
        name: abs(result["parameters"][name]["value"] - truth) / result["parameters"][name]["std"]
        for name, truth in zip(PHYSICAL_NAMES, TRUTH["laminar_flow"])
    }
    return {
        "wall_s": wall,
        "timing_s": result["timing_s"],
        "iterations": result["iterations"],
        "converged": result["converged"],
        "truth_distance_in_std": within,
        "within_3_std": all(d <= 3.0 for d in within.values()),
        "memory": result["memory"],
        "command": " ".join(["mpiexec", "-n", str(ranks), "python", "-m", "homodyne_mpi", "run", config.name]),
    }


def worker(data: str, block_points: int, loaded: bool) -> None:
    """One rank of the distribution measurement (run under mpiexec by ``run_distribution``)."""
    import resource

    import jax  # noqa: F401 - its runtime is part of every fitting rank's memory

    from homodyne_mpi.parallel import MPIComm, balanced_counts

    comm = MPIComm()
    start = time.perf_counter()
    if loaded:
        from homodyne_mpi.data import estimate_noise_sigmas, load_xpcs
        from homodyne_mpi.data.points import PointSet, upper_triangle_points

        full = None
        if comm.is_root:
            c2 = load_xpcs(data, wavevector_q=0.0054, dt=0.1).c2
            full = upper_triangle_points(c2, estimate_noise_sigmas(c2))
            del c2
        n_points = comm.bcast(len(full) if comm.is_root else None)
        counts = balanced_counts(n_points, comm.size)
        local = PointSet(
            **{name: comm.scatter_rows(getattr(full, name) if comm.is_root else None, counts) for name in PointSet.column_names()}
        )
        del full
    else:
        from homodyne_mpi.data.stream import PointSource
        from homodyne_mpi.parallel.scatter import scatter_point_stream

        source = PointSource(data, wavevector_q=0.0054, dt=0.1) if comm.is_root else None
        n_points = comm.bcast(source.n_points if comm.is_root else None)
        blocks = source.point_blocks(source.noise_sigmas(), block_points) if comm.is_root else None
        local = scatter_point_stream(blocks, balanced_counts(n_points, comm.size), comm)
        if source is not None:
            source.close()
    seconds = time.perf_counter() - start
    report = {
        "rank": comm.rank,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "block_bytes": local.nbytes,
        "seconds": seconds,
    }
    everyone = comm.gather(report)
    if comm.is_root:
        print(json.dumps(everyone))


def run_distribution(data: Path, ranks: int, block_points: int, loaded: bool) -> dict:
    """The worker under ``mpiexec -n ranks``; per-rank peak RSS and block bytes."""
    _, stdout = run_mpi(
        ranks, [__file__, "--worker", str(data), "--block-points", str(block_points)] + (["--loaded"] if loaded else [])
    )
    ranks_report = json.loads(stdout.strip().splitlines()[-1])
    for entry in ranks_report:
        entry["peak_minus_block_bytes"] = entry["peak_rss_bytes"] - entry["block_bytes"]
    return {
        "path": "loaded" if loaded else "streamed",
        "block_points": block_points,
        "ranks": ranks_report,
        "command": " ".join(
            [
                "mpiexec",
                "-n",
                str(ranks),
                "python",
                "scripts/bench_scale.py",
                "--worker",
                data.name,
                "--block-points",
                str(block_points),
            ]
            + (["--loaded"] if loaded else [])
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=float, default=1e7)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--block-points", type=float, default=1e6)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "scale"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "scale.json"))
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--no-warmup", action="store_true", help="fit once, without a run that fills the compilation cache first")
    parser.add_argument("--fit-paths", default="streamed,loaded", help="fit paths to run, comma-separated: streamed, loaded")
    parser.add_argument("--skip-distribution", action="store_true", help="no distribution-only worker runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--loaded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, int(args.block_points), args.loaded)
        return
    load_average = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, config, n_frames = make_dataset(workdir, args.points)
    simulate_s = time.perf_counter() - start
    document = {
        "machine": machine(),
        "load_average_at_start": load_average,
        "n_frames": n_frames,
        "n_points": len(PHI) * n_frames * (n_frames - 1) // 2,
        "file_bytes": data.stat().st_size,
        "simulate_s": simulate_s,
        "ranks": args.ranks,
    }
    if not args.skip_distribution:
        document["distribution"] = [
            run_distribution(data, args.ranks, int(args.block_points), loaded) for loaded in (False, True)
        ]
    if not args.skip_fit:
        if not args.no_warmup:
            run_fit(config, args.ranks, workdir / "warmup")
        document["fit"] = {
            path: run_fit(path_config(config, path), args.ranks, workdir / f"fit_{path}") for path in args.fit_paths.split(",")
        }
    write_json(args.output, document)


if __name__ == "__main__":
    main()
