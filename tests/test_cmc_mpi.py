"""CMC across MPI ranks, compared with the one-process run of the same inputs.

Run with::

    mpiexec -n 2 python -m mpi4py -m pytest --with-mpi -m mpi tests/test_cmc_mpi.py
    mpiexec -n 4 python -m mpi4py -m pytest --with-mpi -m mpi tests/test_cmc_mpi.py

Every rank runs each test body; only rank 0 holds the points and gets the result.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from homodyne_mpi.parallel import SerialComm

CMC = {
    "seed": 11,
    "sharding": {"num_shards": 5},
    "per_shard_mcmc": {"num_warmup": 120, "num_samples": 120, "num_chains": 2, "min_warmup": 50, "min_samples": 50},
    "combination": {"max_rhat": 1.3, "max_divergence_rate": 0.3},
}


def mpi_comm():
    from homodyne_mpi.parallel import MPIComm

    return MPIComm()


def simulated():
    from test_cmc_run import simulate

    return simulate("static", n_frames=70, cmc=CMC)


def shared_tmp(comm, tmp_path_factory, name):
    """One folder for all ranks (rank 0 makes it)."""
    path = str(tmp_path_factory.mktemp(name)) if comm.is_root else None
    from pathlib import Path

    return Path(comm.bcast(path))


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(600)
def test_ranks_give_the_serial_draws_and_combination(tmp_path_factory):
    from homodyne_mpi.cmc import run_cmc

    comm = mpi_comm()
    sim = simulated()
    out = shared_tmp(comm, tmp_path_factory, "cmc_mpi")
    result = run_cmc(
        sim.cfg,
        sim.problem,
        sim.points if comm.is_root else None,
        comm,
        warm_start=sim.warm_start,
        output_dir=out if comm.is_root else None,
    )
    if comm.is_root:
        serial = run_cmc(sim.cfg, sim.problem, sim.points, SerialComm(), warm_start=sim.warm_start, output_dir=None)
        assert result.n_ranks == comm.size and serial.n_ranks == 1
        by_index = {s.index: s for s in serial.shards}
        for shard in result.shards:
            np.testing.assert_array_equal(shard.draws, by_index[shard.index].draws)
            np.testing.assert_array_equal(shard.diverging, by_index[shard.index].diverging)
        np.testing.assert_array_equal(result.draws, serial.draws)
        assert result.used == serial.used
        ranks = {s.rank for s in result.shards}
        assert len(ranks) >= 2, f"shards ran on ranks {ranks} only"
        doc = result.to_json_dict()
        assert doc["n_ranks"] == comm.size
        assert len(doc["dispatch"]["ranks"]) == comm.size
        json.dumps(doc)
        assert len(list((out / "cmc" / "shards").glob("shard_*.npz"))) == 5
    else:
        assert result is None
    # the same command again reuses every shard, whatever the rank count
    again = run_cmc(
        sim.cfg,
        sim.problem,
        sim.points if comm.is_root else None,
        comm,
        warm_start=sim.warm_start,
        output_dir=out if comm.is_root else None,
    )
    if comm.is_root:
        assert all(s.reused for s in again.shards)
        np.testing.assert_array_equal(again.draws, result.draws)
    comm.barrier()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(600)
def test_a_shard_failing_on_any_rank_is_recorded(monkeypatch):
    import homodyne_mpi.cmc.worker as runner
    from homodyne_mpi.cmc import run_cmc

    comm = mpi_comm()
    original = runner.sample_shard

    def flaky(worker, index, data, *settings):
        if index == 1:
            raise ValueError(f"injected failure of shard 1 on rank {worker.rank}")
        return original(worker, index, data, *settings)

    monkeypatch.setattr(runner, "sample_shard", flaky)
    sim = simulated()
    result = run_cmc(sim.cfg, sim.problem, sim.points if comm.is_root else None, comm, warm_start=sim.warm_start, output_dir=None)
    if comm.is_root:
        record = [s for s in result.to_json_dict()["shards"] if s["index"] == 1][0]
        assert record["ok"] is False
        assert f"on rank {record['rank']}" in record["error"]
        assert "ValueError" in record["traceback"]
        assert 1 not in result.used and len(result.used) >= 4
    comm.barrier()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_task_farm_keeps_every_rank_busy_and_loses_nothing():
    import time

    from homodyne_mpi.parallel.dispatch import Task, run_task_farm

    comm = mpi_comm()
    n_tasks = 4 * comm.size

    def work(header, arrays):
        time.sleep(0.3)
        if header["k"] == 3:
            raise RuntimeError("task 3 fails")
        return {"k": header["k"]}, {"twice": 2 * arrays["x"]}

    tasks = [Task({"k": k}, (lambda k=k: {"x": np.arange(k + 1, dtype=np.float64)})) for k in range(n_tasks)]
    seen = []
    stats = run_task_farm(comm, tasks if comm.is_root else None, work, seen.append)
    if comm.is_root:
        assert sorted(r.task["k"] for r in seen) == list(range(n_tasks))
        for r in seen:
            if r.task["k"] == 3:
                assert "task 3 fails" in r.header["farm_error"] and "RuntimeError" in r.header["traceback"]
            else:
                np.testing.assert_array_equal(r.arrays["twice"], 2 * np.arange(r.task["k"] + 1))
        assert all(load.tasks >= 1 for load in stats.ranks)
        assert sum(load.tasks for load in stats.ranks) == n_tasks
        # 4 tasks of 0.3 s per rank: the only idle time is a request's round trip
        assert max(load.idle_pending_s for load in stats.ranks) < 0.25
        assert stats.efficiency > 0.8
    else:
        assert stats is None
    comm.barrier()
