"""Benchmark CMC: seconds per shard (parallel vs sequential chains) and multi-rank efficiency.

    python scripts/bench_cmc.py --output bench_cmc.json [--ranks 2] [--shards 8]

1. **Chains.** One shard of simulated static data, sampled with ``chain_method:
   parallel`` and with ``sequential`` (same shard, same key, same settings): the first
   call (with compilation) and the steady-state seconds of each.
2. **Ranks.** ``mpiexec -n RANKS`` runs a whole CMC of ``--shards`` shards and reports
   the task farm's numbers: wall time of the sampling phase, the sum of the shard
   compute times, the parallel efficiency ``sum of shard times / (ranks x wall)``
   (target >= 0.85 at 2 ranks), and each rank's busy time and its idle time while
   shards were still queued. The same run on 1 rank is given for comparison.

The data are made directly from the model (``tests/test_cmc_run.simulate``), the warm
start is the exact least-squares optimum. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench_cmc.json", help="JSON file to write")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks of the multi-shard run")
    parser.add_argument("--shards", type=int, default=8, help="shards of the multi-shard run")
    parser.add_argument("--frames", type=int, default=80, help="frames per angle (2 angles)")
    parser.add_argument("--chains", type=int, default=4, help="chains per shard")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--mpi-part", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cmc_section(args) -> dict:
    return {
        "seed": 3,
        "sharding": {"num_shards": args.shards},
        "per_shard_mcmc": {
            "num_warmup": args.warmup,
            "num_samples": args.samples,
            "num_chains": args.chains,
            "min_warmup": args.warmup,
            "min_samples": args.samples,
        },
    }


def bench_chains(args) -> dict:
    """Seconds for one shard with parallel and with sequential chains."""
    import numpy as np
    from test_cmc_run import simulate

    from homodyne_mpi.cmc.plan import shard_columns
    from homodyne_mpi.cmc.priors import build_priors, noise_scale_of
    from homodyne_mpi.cmc.sampler import SamplerSettings, ShardSampler
    from homodyne_mpi.cmc.shard_model import ShardModel
    from homodyne_mpi.cmc.sharding import assign_shards
    from homodyne_mpi.cmc.worker import shard_data

    sim = simulate("static", n_frames=args.frames, cmc=cmc_section(args))
    shards = assign_shards(sim.points.angle, args.shards, seed=3)
    n_padded = max(len(s) for s in shards)
    priors = build_priors(
        sim.cfg, sim.problem, sim.warm_start, n_shards=args.shards, noise_scale=noise_scale_of(sim.points.weight)
    )
    data, n_points = shard_data(shard_columns(sim.points, shards[0]), n_padded, int(sim.points.angle.max()))
    out = {"shard_points": n_points, "num_chains": args.chains, "num_warmup": args.warmup, "num_samples": args.samples}
    draws = {}
    for method in ("parallel", "sequential"):
        model = ShardModel(priors, sim.problem.spec, sim.problem.layout, sim.problem.phi, n_points=n_padded)
        settings = SamplerSettings(args.warmup, args.samples, args.chains, method)
        sampler = ShardSampler(model, settings, seed=3)
        first_seconds, first = timed(sampler.run, 0, data)
        steady = [timed(sampler.run, 0, data)[0] for _ in range(2)]
        draws[method] = first.draws
        out[method] = {
            "chain_method_used": sampler.chain_method,
            "first_call_s": first_seconds,
            "seconds_per_shard": float(np.min(steady)),
            "mean_leapfrog_steps": float(first.num_steps.mean()),
        }
    out["speedup_parallel_over_sequential"] = out["sequential"]["seconds_per_shard"] / out["parallel"]["seconds_per_shard"]
    out["draws_identical"] = bool(np.array_equal(draws["parallel"], draws["sequential"]))
    return out


def timed(function, *args):
    """``(wall seconds, result)`` of ``function(*args)``."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def mpi_part(args) -> None:
    """Inside mpiexec: one whole CMC run; rank 0 writes its dispatch numbers."""
    from test_cmc_run import simulate

    from homodyne_mpi.cmc import run_cmc
    from homodyne_mpi.parallel import get_comm

    comm = get_comm(use_mpi=True)
    sim = simulate("static", n_frames=args.frames, cmc=cmc_section(args))
    start = time.perf_counter()
    result = run_cmc(sim.cfg, sim.problem, sim.points if comm.is_root else None, comm, warm_start=sim.warm_start, output_dir=None)
    if comm.is_root:
        shard_seconds = {s.index: s.seconds for s in result.shards}
        first = {}
        for s in sorted(result.shards, key=lambda s: s.index):  # dispatch order is by index here
            first.setdefault(s.rank, s.seconds)
        doc = {
            "ranks": comm.size,
            "shards": args.shards,
            "total_s": time.perf_counter() - start,
            "sampling_wall_s": result.dispatch["wall_s"],
            "shard_compute_sum_s": result.dispatch["busy_s"],
            "parallel_efficiency": result.dispatch["parallel_efficiency"],
            "per_rank": result.dispatch["ranks"],
            "seconds_per_shard": shard_seconds,
            "shard_rank": {s.index: s.rank for s in result.shards},
            "first_shard_per_rank_s": first,
            "note": "a rank's first shard includes compiling the sampler (once per rank and run)",
        }
        Path(args.output).write_text(json.dumps(doc, indent=2))


def run_ranks(args, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "mpi.json"
        command = [
            str(Path(sys.executable).parent / "mpiexec"),
            "-n",
            str(ranks),
            sys.executable,
            "-m",
            "mpi4py",
            str(Path(__file__).resolve()),
            "--mpi-part",
            "--output",
            str(target),
            "--shards",
            str(args.shards),
            "--frames",
            str(args.frames),
            "--chains",
            str(args.chains),
            "--warmup",
            str(args.warmup),
            "--samples",
            str(args.samples),
        ]
        env = dict(os.environ)
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"mpiexec failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
        return json.loads(target.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    from homodyne_mpi.parallel.devices import configure_host_devices

    configure_host_devices(args.chains)
    if args.mpi_part:
        mpi_part(args)
        return 0
    report = {"cpu_count": os.cpu_count(), "chains": bench_chains(args)}
    report["multi_rank"] = run_ranks(args, args.ranks)
    if args.ranks != 1:
        report["one_rank"] = run_ranks(args, 1)
    multi = report["multi_rank"]
    if "one_rank" in report:
        report["speedup_vs_one_rank"] = report["one_rank"]["sampling_wall_s"] / multi["sampling_wall_s"]
    report["summary"] = {
        "seconds_per_shard_parallel_chains": report["chains"]["parallel"]["seconds_per_shard"],
        "seconds_per_shard_sequential_chains": report["chains"]["sequential"]["seconds_per_shard"],
        "parallel_efficiency": multi["parallel_efficiency"],
        "ranks": multi["ranks"],
        "target_efficiency": 0.85,
        "meets_target": multi["parallel_efficiency"] >= 0.85,
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
