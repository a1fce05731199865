"""A rank that hangs, or outlives its job, under ``mpiexec -n 2`` (serial tests: ``parallel.watchdog``).

- A CMC shard that hangs (a driver script makes rank 1's shard sleep for an hour inside
  the sampling call): the job ends with exit code 3 within ``shard_timeout_s`` + 60 s,
  with one line naming the shard, the rank, the host and the limit; no rank is left; the
  finished shards are on disk, and the same command (with a larger limit) resumes and
  gives the posterior of an uninterrupted run (on one rank), to the last bit.
- A rank whose launcher process is killed exits within a few seconds.
- A rank that returns while another waits in a collective ends the job (``MPI_Abort``)
  instead of leaving the other spinning.
- Work that hangs in a C call holding the GIL (the watchdog thread cannot run) is ended by
  the ``faulthandler`` backstop, with every thread's traceback.
- A rank that stops responding altogether (SIGSTOP) in a task of the task farm: rank 0,
  which knows when it handed the task out, ends the job with exit code 3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_config
from mpi_jobs import Job, is_running, parent_map, run_command, started_jobs

from homodyne_mpi.data.simulate import simulate_dataset

SHARDS = 6
TRUTH = [8000.0, -0.3, 30.0]
SHARD_LIMIT_S = 30.0
"""Seconds; rank 0's first shard, which traces the model and loads the compiled sampler
from the cache (20 s on a 2-core machine at load average 15), must fit in it."""


@pytest.fixture
def jobs():
    """Jobs started by a test; any still running at its end are killed."""
    yield from started_jobs()


def start_driver(jobs: list, folder: Path, text: str, args: list[str], ready: str) -> tuple[Job, str, dict[int, int]]:
    """Write driver ``text``, run it under ``mpiexec -n 2`` with ``args``; wait for a line
    matching ``ready``. Returns the job, that line and ``rank -> pid``."""
    driver = folder / "driver.py"
    driver.write_text(text)
    job = Job(2, [str(driver), *args], cwd=folder)
    jobs.append(job)
    line = job.wait_for(ready, timeout=120)
    return job, line, job.rank_pids()


def assert_no_rank_left(pids: dict[int, int]) -> None:
    time.sleep(0.5)
    assert not [pid for pid in pids.values() if is_running(pid)], "a rank outlived the job"


@pytest.fixture(scope="module")
def tiny_cmc(tmp_path_factory) -> Path:
    """A folder with 2 angles x 40 frames (1560 points) of static data and a compilation cache."""
    folder = tmp_path_factory.mktemp("hangs")
    simulate_dataset(
        folder / "tiny.h5",
        mode="static",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=40,
        gap=2.0e6,
        physical=TRUTH,
        contrast=0.3,
        offset=1.0,
        phi=[0.0, 60.0],
        noise_sigma=0.01,
        seed=3,
    )
    return folder


TIGHT_PRIORS = [
    # name, min, max, prior mean, prior std
    ("D0", 6000.0, 10000.0, 8000.0, 1000.0),
    ("alpha", -0.5, -0.1, -0.3, 0.1),
    ("D_offset", 0.0, 60.0, 30.0, 15.0),
    ("contrast", 0.2, 0.4, 0.3, 0.05),
    ("offset", 0.9, 1.1, 1.0, 0.05),
]
"""Priors around the truth: with no NLSQ warm start and only 20 warm-up draws, the
template's wide bounds leave NUTS unable to move at all on shards this small."""


def bound(name: str, low: float, high: float, mean: float, std: float) -> dict:
    """One ``parameter_space.bounds`` entry with a truncated-normal prior."""
    return {"name": name, "min": low, "max": high, "prior_mu": mean, "prior_sigma": std, "type": "TruncatedNormal"}


def tiny_config(path: Path, folder: Path, shard_limit_s: float | None) -> Path:
    """CMC in 6 shards of 260 points, a few draws, no retry, every shard kept whatever its R-hat.

    A fault test, not a statistics test: the sampler settings only have to be the same in
    every run. The compilation cache is shared by the runs, so only the first compiles.
    The time limit is not part of the shards' fingerprint: a rerun with another limit
    reuses them.
    """
    return write_config(
        path,
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 40,
            "experimental_data.file_path": str(folder / "tiny.h5"),
            "optimization.method": "cmc",
            "optimization.cmc.sharding.num_shards": SHARDS,
            "optimization.cmc.per_shard_mcmc.num_warmup": 20,
            "optimization.cmc.per_shard_mcmc.num_samples": 20,
            "optimization.cmc.per_shard_mcmc.min_warmup": 20,
            "optimization.cmc.per_shard_mcmc.min_samples": 20,
            "optimization.cmc.per_shard_mcmc.num_chains": 2,
            "optimization.cmc.per_shard_mcmc.chain_method": "sequential",
            "optimization.cmc.per_shard_mcmc.max_tree_depth": 5,
            "optimization.cmc.per_shard_mcmc.retry_target_accept_prob": 0.0,
            "optimization.cmc.per_shard_mcmc.shard_timeout_s": shard_limit_s,
            "parameter_space.bounds": [bound(*row) for row in TIGHT_PRIORS],
            "initial_parameters.values": TRUTH,
            "initial_parameters.per_angle_scaling.contrast": 0.3,
            "optimization.cmc.combination.max_rhat": 1.0e6,
            "optimization.cmc.combination.max_divergence_rate": 1.0,
            "optimization.cmc.combination.min_success_rate": 0.1,
            "optimization.cmc.combination.method": "consensus_mc",
            "compute.compilation_cache_dir": str(folder / "jax-cache"),
            "output.plots": False,
        },
    )


HANGING_SHARD_DRIVER = textwrap.dedent(
    """
    # The real command line, with the first shard of one rank hanging inside the sampling
    # call, as a stuck XLA call would (sleep releases the GIL, as XLA does).
    import os, sys, time
    import homodyne_mpi.cmc.worker as worker
    from homodyne_mpi.cli import main

    hanging_rank = int(sys.argv[1])
    original = worker.sample_shard
    calls = []

    def sample_shard(shard_worker, index, data, settings=None):
        calls.append(index)
        if int(os.environ["PMI_RANK"]) == hanging_rank and len(calls) == 1:
            print(f"test: shard {index} hangs on rank {hanging_rank}", flush=True)
            time.sleep(3600)
        return original(shard_worker, index, data, settings)

    worker.sample_shard = sample_shard
    raise SystemExit(main(sys.argv[2:]))
    """
)


def posterior(result_json: Path) -> dict:
    """``{name: (mean, std)}`` of a ``cmc/result.json``."""
    document = json.loads(result_json.read_text())
    return {name: (entry["mean"], entry["std"]) for name, entry in document["parameters"].items()}


@pytest.mark.timeout(400)
def test_a_hanging_shard_ends_the_job_with_exit_3_and_the_rerun_gives_the_uninterrupted_posterior(tiny_cmc, tmp_path, jobs):
    # the uninterrupted run, on one rank (the posterior does not depend on the rank count);
    # it also compiles the sampler into the cache, so that in the runs below no shard
    # spends its time limit compiling
    reference_out = tmp_path / "reference"
    reference = run_command(1, tiny_config(tmp_path / "reference.yaml", tiny_cmc, None), reference_out, "--no-nlsq-warmstart")
    assert reference.returncode == 0, reference.stderr[-3000:]

    config = tiny_config(tmp_path / "cmc.yaml", tiny_cmc, SHARD_LIMIT_S)
    out = tmp_path / "results"
    args = ["1", "run", str(config), "--output-dir", str(out), "--no-nlsq-warmstart"]
    job, line, pids = start_driver(jobs, tmp_path, HANGING_SHARD_DRIVER, args, r"test: shard \d+ hangs on rank 1")
    hung_at = time.monotonic()
    hanging = int(line.split()[2])
    code = job.wait(timeout=SHARD_LIMIT_S + 60)
    assert code == 3, f"expected exit code 3 after the shard time limit, got {code}:\n{job.output[-3000:]}"
    assert time.monotonic() - hung_at < SHARD_LIMIT_S + 60
    assert_no_rank_left(pids)
    reports = [text for text in job.lines if "time limit" in text]
    assert len(reports) == 1, job.output[-3000:]
    assert f"CMC shard {hanging} on rank 1 of 2 on {socket.gethostname()}" in reports[0]
    assert f"time limit of {SHARD_LIMIT_S:g} s (optimization.cmc.per_shard_mcmc.shard_timeout_s)" in reports[0]
    assert "run the same command to resume" in reports[0]
    # rank 0's shards were saved as they arrived; the hanging one was not
    shards = out / "tiny" / "cmc" / "shards"
    saved = sorted(shards.glob("shard_*.npz"))
    assert 1 <= len(saved) < SHARDS
    assert not (shards / f"shard_{hanging:05d}.npz").exists()
    assert not (out / "tiny" / "cmc" / "result.json").exists()

    # the same command, with the limit raised, resumes with the saved shards
    resumed = run_command(2, tiny_config(tmp_path / "cmc.yaml", tiny_cmc, 10 * SHARD_LIMIT_S), out, "--no-nlsq-warmstart")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    document = json.loads((out / "tiny" / "cmc" / "result.json").read_text())
    assert document["dispatch"]["shards_reused"] == len(saved), document["dispatch"]
    assert document["dispatch"]["shards_run"] == SHARDS - len(saved)

    # shard keys depend only on the seed and the shard index: the combined posterior is
    # that of the uninterrupted run to the last bit
    assert posterior(out / "tiny" / "cmc" / "result.json") == posterior(reference_out / "tiny" / "cmc" / "result.json")


IDLE_RANKS_DRIVER = textwrap.dedent(
    """
    # Two ranks under run_guarded: rank 1 returns with its exit code 3 at once (or calls
    # sys.exit(3)) while rank 0 waits in a collective (or sleeps), as after a signal seen
    # by one rank only.
    import os, sys, time
    import homodyne_mpi.parallel.watchdog as watchdog
    from homodyne_mpi.parallel import get_comm, run_guarded

    watchdog.EXIT_WAIT_S = float(sys.argv[2])
    comm = get_comm()

    def main():
        print(f"test: rank {comm.rank} running", flush=True)
        if comm.rank == 1:
            if sys.argv[3] == "sys.exit":
                sys.exit(3)
            return 3
        if sys.argv[1] == "sleep":
            time.sleep(3600)
        comm.barrier()
        return 0

    raise SystemExit(run_guarded(main, comm))
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("leaving", ["return", "sys.exit"])
def test_a_rank_that_returns_while_another_waits_in_a_collective_aborts_the_job(leaving, tmp_path, jobs):
    wait_s = 2.0
    job, _, pids = start_driver(jobs, tmp_path, IDLE_RANKS_DRIVER, ["barrier", str(wait_s), leaving], r"test: rank 0 running")
    started = time.monotonic()
    assert job.wait(timeout=wait_s + 30) == 3, job.output[-3000:]
    assert time.monotonic() - started < wait_s + 30
    assert_no_rank_left(pids)
    assert "error: rank 1 of 2" in job.output and "other ranks did not reach the end within 2 s" in job.output


@pytest.mark.timeout(120)
def test_a_rank_whose_launcher_is_gone_exits(tmp_path, jobs):
    # rank 0 sleeps outside MPI, rank 1 waits (up to an hour) for it at the end
    job, _, pids = start_driver(jobs, tmp_path, IDLE_RANKS_DRIVER, ["sleep", "3600", "return"], r"test: rank 1 running")
    launchers = {parent_map()[pid] for pid in pids.values()}  # MPICH's hydra_pmi_proxy
    assert len(launchers) == 1 and job.process.pid not in launchers
    os.kill(launchers.pop(), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids.values()):
        time.sleep(0.2)
    left = [pid for pid in pids.values() if is_running(pid)]
    for pid in left:  # do not leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks {left} still running 15 s after their launcher was killed"


GIL_HOLDING_DRIVER = textwrap.dedent(
    """
    # Rank 1 runs work with a 1 s limit that hangs in a C call holding the GIL, so the
    # watchdog thread cannot run: faulthandler's backstop (no GIL needed) ends the process.
    import ctypes, sys
    import homodyne_mpi.parallel.watchdog as watchdog
    from homodyne_mpi.parallel import get_comm, run_guarded

    watchdog.BACKSTOP_S = 2.0
    comm = get_comm()

    def main():
        if comm.rank == 1:
            with watchdog.time_limit(1.0, "test work"):
                print("test: holding the GIL", flush=True)
                ctypes.PyDLL(None).sleep(3600)
        comm.barrier()
        return 0

    raise SystemExit(run_guarded(main, comm))
    """
)


@pytest.mark.timeout(120)
def test_work_that_hangs_holding_the_gil_is_ended_by_the_backstop(tmp_path, jobs):
    job, _, pids = start_driver(jobs, tmp_path, GIL_HOLDING_DRIVER, [], r"test: holding the GIL")
    started = time.monotonic()
    code = job.wait(timeout=60)
    assert code == 1, job.output[-3000:]  # faulthandler's exit code; the launcher ends the other rank
    assert time.monotonic() - started < 60
    assert_no_rank_left(pids)
    assert "Timeout (" in job.output and "most recent call first" in job.output  # every thread's traceback


FROZEN_RANK_DRIVER = textwrap.dedent(
    """
    # A task farm of 4 tasks with a 2 s limit per task; the test stops (SIGSTOP) rank 1 in
    # its first task, so neither its watchdog nor its backstop can run: rank 0 must decide.
    import time
    import homodyne_mpi.parallel.watchdog as watchdog
    from homodyne_mpi.parallel import get_comm, run_guarded
    from homodyne_mpi.parallel.dispatch import Task, run_task_farm

    watchdog.OVERDUE_GRACE_S = 2.0
    comm = get_comm()

    def work(header, arrays):
        if comm.rank == 1:
            print(f"test: rank 1 runs task {header['index']}", flush=True)
            time.sleep(3600)
        return {}, {}

    def main():
        limit = watchdog.TaskLimit(seconds=2.0, name=lambda task: f"task {task['index']}", setting="test.limit")
        tasks = [Task({"index": k}) for k in range(4)] if comm.is_root else None
        run_task_farm(comm, tasks, work, task_limit=limit)
        return 0

    raise SystemExit(run_guarded(main, comm))
    """
)


@pytest.mark.timeout(120)
def test_rank_0_ends_the_job_when_a_rank_running_a_task_stops_responding(tmp_path, jobs):
    job, line, pids = start_driver(jobs, tmp_path, FROZEN_RANK_DRIVER, [], r"test: rank 1 runs task \d+")
    os.kill(pids[1], signal.SIGSTOP)  # a frozen process: no thread of it runs
    stopped_at = time.monotonic()
    assert job.wait(timeout=60) == 3, job.output[-3000:]
    assert time.monotonic() - stopped_at < 60
    assert_no_rank_left(pids)
    reports = [text for text in job.lines if "has not come back" in text]
    assert len(reports) == 1 and "did not finish within" not in job.output, job.output[-3000:]
    task = line.split()[-1]
    assert reports[0].startswith(f"error: task {task} on rank 1 on {socket.gethostname()} has not come back")
    assert "(time limit 2 s, test.limit)" in reports[0] and "exit code 3" in reports[0]
