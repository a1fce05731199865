"""Where parallel chains stop paying: seconds per shard, parallel vs sequential, by shard size.

    python scripts/bench_cmc_chains.py [--sizes 250,500,1000,2000] [--output FILE]

For each shard size it cuts one shard of that many points from simulated static data
(2 angles, exact warm start, ``tests/test_cmc_run.simulate``) and samples it with 4
chains, 200 warm-up + 300 samples, once with ``chain_method: parallel`` (``jax.pmap``
over 4 host devices) and once ``sequential`` (same keys, same draws): the first call
(with compilation) and the best of two further calls. ``sampler.MIN_POINTS_FOR_PARALLEL``
is set from where the ratio crosses 1. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from homodyne_mpi.parallel.devices import configure_host_devices  # noqa: E402

CHAINS = 4
configure_host_devices(CHAINS)

import numpy as np  # noqa: E402
from bench_common import machine  # noqa: E402
from test_cmc_run import simulate  # noqa: E402

from homodyne_mpi.cmc.plan import shard_columns  # noqa: E402
from homodyne_mpi.cmc.priors import build_priors, noise_scale_of  # noqa: E402
from homodyne_mpi.cmc.sampler import SamplerSettings, ShardSampler  # noqa: E402
from homodyne_mpi.cmc.shard_model import ShardModel  # noqa: E402
from homodyne_mpi.cmc.sharding import assign_shards  # noqa: E402
from homodyne_mpi.cmc.worker import shard_data  # noqa: E402


def one_size(sim, size: int, warmup: int, samples: int) -> dict:
    """Seconds per shard of ``size`` points with each chain method."""
    n_shards = max(1, len(sim.points) // size)
    shard = assign_shards(sim.points.angle, n_shards, seed=3)[0][:size]
    priors = build_priors(sim.cfg, sim.problem, sim.warm_start, n_shards=n_shards, noise_scale=noise_scale_of(sim.points.weight))
    data, n_points = shard_data(shard_columns(sim.points, shard), size, int(sim.points.angle.max()))
    out = {"shard_points": n_points}
    for method in ("parallel", "sequential"):
        model = ShardModel(priors, sim.problem.spec, sim.problem.layout, sim.problem.phi, n_points=size)
        sampler = ShardSampler(model, SamplerSettings(warmup, samples, CHAINS, method), seed=3)
        first = sampler.run(0, data)
        steady = min(sampler.run(0, data).seconds for _ in range(2))
        out[method] = {"first_call_s": first.seconds, "seconds_per_shard": steady, "used": sampler.chain_method}
    out["parallel_over_sequential"] = out["parallel"]["seconds_per_shard"] / out["sequential"]["seconds_per_shard"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--output", default="bench_results/bench_cmc_chains.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    frames = int(np.ceil(np.sqrt(2 * max(sizes)))) + 2  # 2 angles of frames*(frames-1)/2 points each
    sim = simulate("static", n_frames=frames)
    results = []
    for size in sizes:
        results.append(one_size(sim, size, args.warmup, args.samples))
        print(json.dumps(results[-1]), flush=True)
    document = {
        "benchmark": "CMC chains: parallel vs sequential by shard size",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "chains": CHAINS,
        "warmup": args.warmup,
        "samples": args.samples,
        "sizes": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
