"""Where a CMC shard's posterior bends: the curvature of the sampled density at every draw.

    python scripts/diagnose_shard_curvature.py --case static_small_shards --seed 5 --shards 0,2
                                               [--output FILE]

Builds a case of ``bench_cmc_hard.py`` (simulation, NLSQ with the jackknife, the CMC plan of a
2-rank run), samples each named shard with the plan's first-attempt settings (one process,
parallel chains), and at every draw evaluates the Hessian of the negative log density in the
coordinates NUTS samples (``ShardModel``'s site ``w``). NUTS runs with one step size and a
fixed diagonal metric per chain, so a shard whose largest Hessian eigenvalue varies by orders
of magnitude over its draws cannot be integrated well everywhere: the step that suits the bulk
diverges where the density bends most. Per shard the JSON holds the divergence rate, the
quantiles of the largest eigenvalue over all draws and over the divergent ones, the
correlation of its logarithm with each sampled parameter, and the median parameters of the
10% most curved draws against the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import bench_cmc_hard as cases  # noqa: E402  (sets the host device count before JAX starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.cmc.calibration import likelihood_calibration  # noqa: E402
from homodyne_mpi.cmc.plan import RootState, plan_run, shard_columns  # noqa: E402
from homodyne_mpi.cmc.sampler import ShardSampler, diagnostics  # noqa: E402
from homodyne_mpi.cmc.shard_model import ShardModel  # noqa: E402
from homodyne_mpi.cmc.worker import shard_data  # noqa: E402

QUANTILES = (5, 50, 95, 100)


class RecordingModel(ShardModel):
    """The shard model, with each draw's site ``w`` appended to its recorded vector."""

    def sampled_vector(self, sites: dict, data) -> jnp.ndarray:
        return jnp.concatenate([super().sampled_vector(sites, data), sites["w"]])


def largest_curvature(model: ShardModel, data, sites: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of the Hessian of ``-log_density`` at each row of ``sites``."""
    hessian = jax.jit(jax.vmap(jax.hessian(lambda w: -model.log_density(w, data))))
    return np.linalg.eigvalsh(np.asarray(hessian(jnp.asarray(sites))))[:, -1]


def shard_curvature(plan, problem, points, state: RootState, index: int) -> dict:
    """Sample shard ``index`` and summarise the curvature at its draws."""
    data, n_points = shard_data(shard_columns(points, state.shards[index]), plan.n_padded, plan.fill_angle)
    model = RecordingModel(
        plan.priors, problem.spec, problem.layout, problem.phi, calibration=plan.calibration, n_points=plan.n_padded
    )
    start = time.perf_counter()
    out = ShardSampler(model, plan.settings, seed=plan.seed).run(index, data)
    seconds = time.perf_counter() - start
    n_sampled = plan.priors.n_sampled + 1  # parameters, then sigma
    draws = out.draws[..., :n_sampled]
    flat = draws.reshape(-1, n_sampled)
    sites = out.draws.reshape(-1, out.draws.shape[-1])[:, n_sampled:]
    top = largest_curvature(model, data, sites)
    divergent = out.diverging.reshape(-1)
    curved = top > np.percentile(top, 90)
    rhat, _ = diagnostics(draws)
    names = [*plan.priors.names, "sigma"]
    return {
        "shard": index,
        "n_points": n_points,
        "divergence_rate": float(divergent.mean()),
        "rhat_max": float(rhat.max()),
        "median_leapfrog_steps": float(np.median(out.num_steps)),
        "seconds": seconds,
        "largest_eigenvalue_quantiles": {f"q{q}": float(np.percentile(top, q)) for q in QUANTILES},
        "largest_eigenvalue_quantiles_divergent": (
            {f"q{q}": float(np.percentile(top[divergent], q)) for q in QUANTILES} if divergent.any() else None
        ),
        "corr_log_eigenvalue": {
            name: float(np.corrcoef(np.log(np.maximum(top, 1e-300)), flat[:, k])[0, 1])
            for k, name in enumerate(names)
            if np.ptp(flat[:, k]) > 0
        },
        "median_most_curved_10pct": dict(zip(names, np.median(flat[curved], axis=0).tolist())),
        "median_rest": dict(zip(names, np.median(flat[~curved], axis=0).tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="static_small_shards", choices=sorted(cases.CASES))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--shards", default="0", help="comma-separated shard indices")
    parser.add_argument("--ranks", type=int, default=2, help="the rank count the plan assumes (sets the automatic shard count)")
    parser.add_argument("--output", default="bench_results/shard_curvature.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "case").mkdir()
        cfg, problem, points, nlsq = cases.build_case(cases.CASES[args.case], args.seed, Path(folder) / "case")
        state = RootState()
        calibration = likelihood_calibration(nlsq, problem)
        plan = plan_run(cfg, problem, points, nlsq, calibration, None, state, n_ranks=args.ranks)
        shards = [shard_curvature(plan, problem, points, state, int(k)) for k in args.shards.split(",")]
    write_json(
        args.output,
        {
            "benchmark": "curvature of CMC shard posteriors at their draws",
            "command": " ".join(["python", *sys.argv]),
            "machine": machine(),
            "case": args.case,
            "seed": args.seed,
            "calibration": calibration,
            "settings": vars(plan.settings),
            "shards": shards,
        },
    )


if __name__ == "__main__":
    main()
