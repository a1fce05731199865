"""How a hard CMC shard's divergences and R-hat answer to warm-up length and target acceptance.

    python scripts/study_retry_ladder.py --case static_small_data --seeds 1,2,11 --shards 0
                                         [--rungs 500:0.8,1000:0.95,2000:0.95,2000:0.99,4000:0.99:1000]
                                         [--output FILE]

Builds each (case, seed) of ``bench_cmc_hard.py`` (simulation, NLSQ with the jackknife, the CMC
plan of a 2-rank run) and samples the named shards once per rung ``warm-up:target`` (one process,
parallel chains, the plan's keys, draws and tree depth otherwise; ``warm-up:target:draws`` also
sets the draws per chain). Per rung the JSON holds the divergence rate, split R-hat (largest and
per parameter), ESS (smallest and per parameter), each chain's mean and divergences, the median
leapfrog steps per draw, the share of draws whose tree reached the depth limit, and the seconds. The retry policy (``cmc/worker.py``) is
chosen from these figures: which further attempts bring a shard that misses 1% divergent or
R-hat 1.05 under those limits, and at what cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import bench_cmc_hard as cases  # noqa: E402  (sets the host device count before JAX starts)
import numpy as np  # noqa: E402
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.cmc.calibration import likelihood_calibration  # noqa: E402
from homodyne_mpi.cmc.plan import RootState, plan_run, shard_columns  # noqa: E402
from homodyne_mpi.cmc.sampler import ShardSampler, diagnostics  # noqa: E402
from homodyne_mpi.cmc.shard_model import ShardModel  # noqa: E402
from homodyne_mpi.cmc.worker import shard_data  # noqa: E402

DEFAULT_RUNGS = "500:0.8,1000:0.95,2000:0.95,2000:0.99,4000:0.99"


def parse_rungs(text: str) -> list[tuple[int, float, int | None]]:
    """``"500:0.8,1000:0.95:2000"`` -> ``[(500, 0.8, None), (1000, 0.95, 2000)]``: warm-up, target and,
    optionally, the number of draws kept per chain (None: the plan's)."""
    rungs = []
    for item in text.split(","):
        warmup, target, *samples = item.split(":")
        rungs.append((int(warmup), float(target), int(samples[0]) if samples else None))
    return rungs


def sample_rung(model: ShardModel, plan, data, index: int, warmup: int, target: float, samples: int | None) -> dict:
    """One sampling of shard ``index`` with ``warmup`` draws of adaptation at ``target`` and ``samples``
    draws per chain (None: the plan's)."""
    settings = dataclasses.replace(
        plan.settings, num_warmup=warmup, target_accept_prob=target, num_samples=samples or plan.settings.num_samples
    )
    start = time.perf_counter()
    out = ShardSampler(model, settings, seed=plan.seed).run(index, data)
    seconds = time.perf_counter() - start
    rhat, ess = diagnostics(out.draws)
    steps = np.asarray(out.num_steps).reshape(-1)
    return {
        "num_warmup": warmup,
        "target_accept_prob": target,
        "num_samples": settings.num_samples,
        "divergence_rate": float(np.mean(out.diverging)),
        "rhat_max": float(np.max(rhat)),
        "ess_min": float(np.min(ess)),
        "rhat": rhat.tolist(),
        "ess": ess.tolist(),
        "chain_means": np.mean(out.draws, axis=1).tolist(),
        "chain_divergences": np.sum(out.diverging, axis=1).tolist(),
        "median_leapfrog_steps": float(np.median(steps)),
        "share_at_depth_limit": float(np.mean(steps >= 2**settings.max_tree_depth - 1)),
        "seconds": seconds,
    }


def study_seed(case: str, seed: int, shards: list[int], rungs, ranks: int) -> dict:
    """Every rung on every named shard of one (case, seed)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "case").mkdir()
        cfg, problem, points, nlsq = cases.build_case(cases.CASES[case], seed, Path(folder) / "case")
        state = RootState()
        calibration = likelihood_calibration(nlsq, problem)
        plan = plan_run(cfg, problem, points, nlsq, calibration, None, state, n_ranks=ranks)
        model = ShardModel(
            plan.priors, problem.spec, problem.layout, problem.phi, calibration=plan.calibration, n_points=plan.n_padded
        )
        records = []
        for index in shards:
            data, n_points = shard_data(shard_columns(points, state.shards[index]), plan.n_padded, plan.fill_angle)
            for warmup, target, samples in rungs:
                rung = sample_rung(model, plan, data, index, warmup, target, samples)
                print(f"{case} seed {seed} shard {index}: {rung}", flush=True)
                records.append({"shard": index, "n_points": n_points, **rung})
    return {
        "case": case,
        "seed": seed,
        "calibration": calibration,
        "names": list(plan.priors.names) + ["sigma"],
        "num_samples": plan.settings.num_samples,
        "rungs": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="static_small_data", choices=sorted(cases.CASES))
    parser.add_argument("--seeds", default="1,2,11")
    parser.add_argument("--shards", default="0", help="comma-separated shard indices")
    parser.add_argument("--rungs", default=DEFAULT_RUNGS, help="warm-up:target[:draws per chain], comma-separated")
    parser.add_argument("--ranks", type=int, default=2, help="the rank count the plan assumes (sets the automatic shard count)")
    parser.add_argument("--output", default="bench_results/retry_ladder.json")
    args = parser.parse_args()
    rungs = parse_rungs(args.rungs)
    shards = [int(k) for k in args.shards.split(",")]
    results = []
    for seed in cases.parse_seeds(args.seeds):
        results.append(study_seed(args.case, seed, shards, rungs, args.ranks))
        write_json(
            args.output,
            {
                "benchmark": "CMC shard diagnostics per warm-up and target acceptance",
                "command": " ".join(["python", *sys.argv]),
                "machine": machine(),
                "case": args.case,
                "seeds": results,
            },
        )


if __name__ == "__main__":
    main()
