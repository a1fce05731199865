"""The distributed CMC driver: shards out from rank 0, NUTS on every rank, consensus on rank 0.

``run_cmc`` runs on every rank: rank 0 plans the run (``plan``) and broadcasts the plan;
the shards go through the task farm of ``parallel.dispatch`` (``worker``), rank 0
checkpointing each result and logging progress; rank 0 then filters and combines them
(``result``). Errors in planning or too few good shards are raised on every rank together.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from ..data.points import PointSet
from ..errors import FitError, Interrupted, collective
from ..io.atomic import atomic_write_json
from ..parallel.dispatch import FarmResult, FarmStats, Task, run_task_farm
from ..parallel.signals import stop_requested as _stop_requested  # tests replace it
from . import checkpoint
from .plan import RootState, RunPlan, plan_run, shard_columns
from .result import CMCResult, combine_shards, failure_document
from .sampler import ShardResult
from .sharding import dispatch_order
from .worker import ShardWorker, shard_time_limit

log = logging.getLogger(__name__)


class Progress:
    """Rank 0's record of finished shards: checkpoints and progress lines."""

    def __init__(self, plan: RunPlan, state: RootState, output_dir) -> None:
        self.plan, self.state, self.output_dir = plan, state, output_dir
        self.results: dict[int, ShardResult] = dict(state.reused)
        self.to_run = plan.n_shards - len(state.reused)
        self.ran = 0
        self.start = time.perf_counter()

    def __call__(self, finished: FarmResult) -> None:
        index = int(finished.task["index"])
        if "farm_error" in finished.header:
            header, n_points = finished.header, int(finished.task["n_points"])
            result = ShardResult(
                index, n_points, seconds=finished.seconds, error=header["farm_error"], traceback=header.get("traceback")
            )
        else:
            result = ShardResult.from_parts(finished.header, finished.arrays)
        result.rank = finished.rank
        self.results[index] = result
        if not result.failed and self.output_dir is not None:
            checkpoint.save_shard(self.output_dir, result, self.state.fingerprints[index])
        self.ran += 1
        elapsed = time.perf_counter() - self.start
        rate = self.ran / elapsed if elapsed > 0 else float("inf")  # > 0: a shard has finished
        eta = (self.to_run - self.ran) / rate
        if result.failed:
            detail = f"FAILED ({result.error})"
        else:
            detail = f"R-hat {result.rhat_max:.3f}, ESS {result.ess_min:.0f}, {result.divergences} divergences"
        log.info(
            "CMC: %d/%d shards done; shard %d on rank %d took %.1f s (%s); %.3g shards/s, ETA %.0f s",
            len(self.results),
            self.plan.n_shards,
            index,
            result.rank,
            result.seconds,
            detail,
            rate,
            eta,
        )


def run_cmc(
    cfg, problem, points: PointSet | None, comm, *, warm_start=None, output_dir: Path | None = None, calibration: float = 1.0
) -> CMCResult | None:
    """Consensus Monte Carlo of ``problem`` on every rank; rank 0 returns the ``CMCResult``, others None.

    ``points`` and ``output_dir`` (``<output>/<dataset>``, shards checkpointed in its ``cmc/shards``)
    are rank 0's; ``calibration`` (>= 1) divides the log-likelihood. Raises ``FitError`` on every
    rank when too few shards are good, ``Interrupted`` when a stop was requested between shards.
    """
    start = time.perf_counter()
    state = RootState()
    output_dir = Path(output_dir) if output_dir is not None else None
    plan: RunPlan = comm.run_on_root(
        lambda: plan_run(cfg, problem, points, warm_start, float(calibration), output_dir, state, n_ranks=comm.size)
    )
    prepared = time.perf_counter()
    worker = ShardWorker(problem, plan, comm.rank)
    progress = tasks = None
    if comm.is_root:
        assert points is not None, "plan_run has raised on every rank when rank 0 has no points"
        progress = Progress(plan, state, output_dir)
        sizes = [len(s) for s in state.shards]
        tasks = [
            Task({"index": k, "n_points": sizes[k]}, partial(shard_columns, points, state.shards[k]))
            for k in dispatch_order(sizes)
            if k not in state.reused
        ]
    time_limit = shard_time_limit(cfg.optimization.cmc.per_shard_mcmc.shard_timeout_s)
    stats: FarmStats | None = run_task_farm(
        comm, tasks, worker, progress, should_stop=_stop_requested, passthrough=(Interrupted,), task_limit=time_limit
    )
    sampled = time.perf_counter()
    if comm.bcast(stats.stopped if stats is not None else None):  # stats: rank 0 only
        done = len(progress.results) if progress else 0
        raise collective(  # raised on every rank together: exit 3, no abort
            Interrupted(
                f"CMC stopped on request after {done} of {plan.n_shards} shards; finished shards are in "
                f"{checkpoint.shard_folder(output_dir) if output_dir else '(no output folder)'} -- rerun the same command to resume"
            )
        )
    holder: dict = {}

    def finish() -> None:
        assert progress is not None and stats is not None, "finish runs on rank 0, which has both"
        results = list(progress.results.values())
        try:
            result = combine_shards(cfg, problem, plan, results, comm.size)
        except FitError as error:
            if output_dir is not None:
                document = failure_document(plan, results, error, comm.size, cfg.optimization.cmc.combination)
                atomic_write_json(output_dir / "cmc" / "result.json", document)
            raise
        end = time.perf_counter()
        ran = [r for r in results if not r.reused]
        result.timing_s = {
            "total": end - start,
            "prepare": prepared - start,
            "sampling_wall": sampled - prepared,
            "shard_compute_sum": float(sum(r.seconds for r in ran)),
            "combine": end - sampled,
        }
        result.dispatch = {**stats.to_dict(), "shards_run": len(ran), "shards_reused": len(results) - len(ran)}
        log.info(
            "CMC: combined %d of %d shards (%s) in %.1f s; parallel efficiency %.2f on %d rank(s)",
            len(result.used),
            plan.n_shards,
            result.combination["method"],
            end - start,
            stats.efficiency,
            comm.size,
        )
        holder["result"] = result

    comm.run_on_root(finish)
    return holder.get("result")
