"""Faults of a real run under ``mpiexec -n 2`` and ``-n 4``: nothing hangs, nothing is lost.

Serial tests (no ``mpi`` mark): each starts ``mpiexec -n N homodyne-mpi run`` as a child
process, injects a fault while the ranks are working, and checks what ``docs/architecture.md`` ("Exit codes") promises:

- a rank killed with SIGKILL ends the whole job with a non-zero exit within 60 s, no rank
  is left behind, and the same command then completes on the intact results folder;
- an exception on one rank aborts every rank, with one message naming the rank, its host
  and the error;
- SIGTERM on one rank (any rank): the ranks checkpoint (NLSQ state, finished CMC shards)
  and exit with code 3; the same command resumes and gives the result of an
  uninterrupted run (rtol 1e-10; same rank count, so the same summation order).

Rank processes are found below ``mpiexec`` in /proc by their ``PMI_RANK``. Every wait has
a deadline, and a test that fails kills its own ``mpiexec`` process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config
from mpi_jobs import Job, is_running, run_command, started_jobs

from homodyne_mpi.data.simulate import simulate_dataset

RANKS = [2, 4]
LAMINAR_TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
STATIC_TRUTH = [8000.0, -0.3, 30.0]
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
KILL_DEADLINE_S = 60.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parameter_values(result_json: Path, key: str = "value") -> dict[str, float]:
    document = json.loads(result_json.read_text())
    return {name: entry[key] for name, entry in document["parameters"].items()}


def assert_same_parameters(got: Path, expected: Path, key: str = "value", rtol: float = 1e-10) -> None:
    a, b = parameter_values(got, key), parameter_values(expected, key)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=0, err_msg=name)


def no_temporary_files(folder: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (temporary names) under ``folder``."""
    return [p for p in folder.rglob("*") if p.is_file() and (p.name.startswith(".") or ".tmp" in p.name or p.suffix == ".tmp")]


@pytest.fixture
def jobs():
    """Jobs started by a test; any still running at its end are killed."""
    yield from started_jobs()


# -- data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def laminar_data(tmp_path_factory) -> Path:
    """About 1e6 points (6 angles, 577 frames) of laminar-flow data, simulated once."""
    path = tmp_path_factory.mktemp("faults") / "laminar.h5"
    simulate_dataset(
        path,
        mode="laminar_flow",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=577,
        gap=2.0e6,
        physical=LAMINAR_TRUTH,
        contrast=0.3,
        offset=1.0,
        phi=PHI,
        noise_sigma=0.01,
        seed=5,
    )
    return path


def laminar_config(path: Path, data: Path, **changes) -> Path:
    """NLSQ of the laminar data set; no figures, model errors (no jackknife refits)."""
    return write_config(
        path,
        "laminar_flow",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 577,
            "experimental_data.file_path": str(data),
            "optimization.method": "nlsq",
            "optimization.nlsq.uncertainty": "model",
            "output.plots": False,
            **changes,
        },
    )


def long_fit_config(path: Path, data: Path) -> Path:
    """A fit that spends its time in the LM loop: 30 iterations from the template start.

    Without the start search the LM loop starts far away and uses all 30 iterations, so a
    signal after iteration 3 always lands mid-fit, and the run's result depends on the
    whole LM state (parameters, damping, iteration count): a resume must restore all of it.
    """
    return laminar_config(path, data, **{"optimization.nlsq.start_search": False, "optimization.nlsq.max_iterations": 30})


# -- SIGKILL of a rank -------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks", RANKS)
def test_sigkill_of_one_rank_ends_the_job_and_loses_nothing(ranks, laminar_data, tmp_path, jobs):
    config = laminar_config(tmp_path / "fit.yaml", laminar_data)
    out = tmp_path / "results"
    data_hash = sha256(laminar_data)
    job = Job(ranks, ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out)], cwd=tmp_path)
    jobs.append(job)
    job.wait_for(r"start search|LM +1 ", timeout=300)  # the ranks are inside the fit
    pids = job.rank_pids()
    victim = pids[ranks - 1]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    code = job.wait(timeout=KILL_DEADLINE_S)
    elapsed = time.monotonic() - killed_at
    assert code != 0, f"mpiexec exited 0 after a rank was killed:\n{job.output[-3000:]}"
    assert elapsed < KILL_DEADLINE_S
    time.sleep(0.5)
    left = [pid for pid in pids.values() if is_running(pid)]
    assert not left, f"rank processes {left} still running {elapsed:.1f} s after rank {ranks - 1} was killed"
    # nothing lost: the input is untouched, no half-written result, and the same command completes
    assert sha256(laminar_data) == data_hash
    assert not (out / "laminar" / "nlsq" / "result.json").exists()
    assert not no_temporary_files(out), no_temporary_files(out)
    rerun = run_command(ranks, config, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    document = json.loads((out / "laminar" / "nlsq" / "result.json").read_text())
    assert document["converged"] and document["n_ranks"] == ranks


# -- an exception on one rank ------------------------------------------------------------

FAILING_RANK_DRIVER = textwrap.dedent(
    """
    # The real command line, with one rank's kernel failing on its third evaluation:
    # the other ranks are then waiting for it in the NLSQ Allreduce.
    import sys
    import homodyne_mpi.nlsq.fit as fit
    from homodyne_mpi.cli import main

    failing_rank = int(sys.argv[1])
    original = fit.DistributedObjective.local_terms
    calls = []

    def local_terms(self, *args, **kwargs):
        calls.append(1)
        if self.comm.rank == failing_rank and len(calls) == 3:
            raise RuntimeError(f"injected failure on rank {failing_rank}")
        return original(self, *args, **kwargs)

    fit.DistributedObjective.local_terms = local_terms
    raise SystemExit(main(sys.argv[2:]))
    """
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks", RANKS)
def test_exception_on_one_rank_aborts_every_rank_naming_rank_host_and_error(ranks, laminar_data, tmp_path, jobs):
    config = laminar_config(tmp_path / "fit.yaml", laminar_data, **{"optimization.nlsq.start_search": False})
    out = tmp_path / "results"
    driver = tmp_path / "failing_rank.py"
    driver.write_text(FAILING_RANK_DRIVER)
    failing = ranks - 1
    job = Job(ranks, [str(driver), str(failing), "run", str(config), "--output-dir", str(out)], cwd=tmp_path)
    jobs.append(job)
    job.wait_for(r"batch of 1 data set", timeout=300)
    pids = job.rank_pids()
    job.wait_for(rf"fatal error on rank {failing} of {ranks}", timeout=300)
    failed_at = time.monotonic()
    code = job.wait(timeout=KILL_DEADLINE_S)
    assert code != 0
    assert time.monotonic() - failed_at < KILL_DEADLINE_S
    time.sleep(0.5)
    assert not [pid for pid in pids.values() if is_running(pid)], "a rank outlived the abort"
    host = socket.gethostname()
    expected = f"fatal error on rank {failing} of {ranks} on {host}: RuntimeError: injected failure on rank {failing}"
    assert expected in job.output, job.output[-3000:]
    assert "Traceback" in job.output
    assert job.output.count("fatal error on rank") == 1, "only the failing rank reports"
    assert not (out / "laminar" / "nlsq" / "result.json").exists()


# -- SIGTERM, then the same command resumes ----------------------------------------------


def reference_runs(tmp_path_factory, prefix: str, write_config, result: str):
    """``ranks -> results/<result>`` of an uninterrupted run of ``write_config(folder)``, run once per rank count."""
    made: dict[int, Path] = {}

    def reference(ranks: int) -> Path:
        if ranks not in made:
            folder = tmp_path_factory.mktemp(f"{prefix}{ranks}")
            completed = run_command(ranks, write_config(folder), folder / "results")
            assert completed.returncode == 0, completed.stderr[-3000:]
            made[ranks] = folder / "results" / result
        return made[ranks]

    return reference


@pytest.fixture(scope="module")
def uninterrupted_nlsq(laminar_data, tmp_path_factory):
    """``ranks -> result.json`` of the long fit run without interruption (made on demand)."""
    return reference_runs(
        tmp_path_factory,
        "reference",
        lambda folder: long_fit_config(folder / "fit.yaml", laminar_data),
        "laminar/nlsq/result.json",
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ranks", RANKS)
def test_sigterm_on_one_rank_checkpoints_exits_3_and_the_same_command_resumes(
    ranks, laminar_data, uninterrupted_nlsq, tmp_path, jobs
):
    reference = uninterrupted_nlsq(ranks)
    config = long_fit_config(tmp_path / "fit.yaml", laminar_data)
    out = tmp_path / "results"
    args = ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out)]
    job = Job(ranks, args, cwd=tmp_path)
    jobs.append(job)
    job.wait_for(r"LM +3 ", timeout=300)
    victim = job.rank_pids()[ranks - 1]  # not rank 0: the flag must travel to the others
    os.kill(victim, signal.SIGTERM)
    code = job.wait(timeout=120)
    assert code == 3, f"expected exit code 3 after SIGTERM, got {code}:\n{job.output[-3000:]}"
    assert "MPI_Abort" not in job.output and "error on rank" not in job.output, job.output[-3000:]
    checkpoint = json.loads((out / "laminar" / "nlsq" / "checkpoint.json").read_text())
    assert 3 <= checkpoint["iteration"] < 30, checkpoint
    assert not (out / "laminar" / "nlsq" / "result.json").exists()
    resumed = run_command(ranks, config, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stderr.lower(), "the second run did not say it resumed"
    result = out / "laminar" / "nlsq" / "result.json"
    assert_same_parameters(result, reference)
    assert json.loads(result.read_text())["iterations"] == json.loads(reference.read_text())["iterations"]
    assert json.loads(result.read_text())["chi2"] == pytest.approx(json.loads(reference.read_text())["chi2"], rel=1e-10)
    assert not (out / "laminar" / "nlsq" / "checkpoint.json").exists(), "a finished fit leaves no checkpoint"


@pytest.mark.timeout(600)
def test_sigterm_to_mpiexec_reaches_every_rank_and_exits_3(laminar_data, tmp_path, jobs):
    """MPICH's mpiexec passes SIGTERM (and SIGUSR1) on to all ranks: same outcome."""
    config = long_fit_config(tmp_path / "fit.yaml", laminar_data)
    out = tmp_path / "results"
    job = Job(2, ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out)], cwd=tmp_path)
    jobs.append(job)
    job.wait_for(r"LM +3 ", timeout=300)
    job.process.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 3, job.output[-3000:]
    assert (out / "laminar" / "nlsq" / "checkpoint.json").exists()


# -- SIGTERM during CMC ------------------------------------------------------------------

CMC_SHARDS = 16


@pytest.fixture(scope="module")
def static_data(tmp_path_factory) -> Path:
    """A small static data set (2 angles, 120 frames: 14280 points) for CMC."""
    path = tmp_path_factory.mktemp("faults_cmc") / "static.h5"
    simulate_dataset(
        path,
        mode="static",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=120,
        gap=2.0e6,
        physical=STATIC_TRUTH,
        contrast=0.3,
        offset=1.0,
        phi=[0.0, 60.0],
        noise_sigma=0.01,
        seed=3,
    )
    return path


def cmc_config(path: Path, data: Path) -> Path:
    return write_config(
        path,
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 120,
            "experimental_data.file_path": str(data),
            "optimization.method": "cmc",
            "optimization.nlsq.uncertainty": "model",
            "optimization.cmc.sharding.num_shards": CMC_SHARDS,
            "optimization.cmc.per_shard_mcmc.num_warmup": 100,
            "optimization.cmc.per_shard_mcmc.num_samples": 100,
            "optimization.cmc.per_shard_mcmc.num_chains": 2,
            "optimization.cmc.per_shard_mcmc.min_warmup": 50,
            "optimization.cmc.per_shard_mcmc.min_samples": 50,
            # a fault test, not a statistics test: keep every shard whatever its R-hat
            "optimization.cmc.combination.max_rhat": 10.0,
            "optimization.cmc.combination.max_divergence_rate": 1.0,
            "optimization.cmc.combination.min_success_rate": 0.5,
            "output.plots": False,
        },
    )


@pytest.fixture(scope="module")
def uninterrupted_cmc(static_data, tmp_path_factory):
    """``ranks -> cmc/result.json`` of the CMC run without interruption (made on demand).

    Same rank count as the interrupted run: the NLSQ warm start, and so the priors, carry
    the rank count's summation order, and NUTS amplifies a last-bit difference.
    """
    return reference_runs(
        tmp_path_factory, "reference_cmc", lambda folder: cmc_config(folder / "cmc.yaml", static_data), "static/cmc/result.json"
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ranks", RANKS)
def test_sigterm_during_cmc_keeps_finished_shards_and_the_same_command_resumes(
    ranks, static_data, uninterrupted_cmc, tmp_path, jobs
):
    reference = uninterrupted_cmc(ranks)
    config = cmc_config(tmp_path / "cmc.yaml", static_data)
    out = tmp_path / "results"
    shards = out / "static" / "cmc" / "shards"
    job = Job(ranks, ["-m", "homodyne_mpi", "run", str(config), "--output-dir", str(out)], cwd=tmp_path)
    jobs.append(job)
    # The signal comes while every rank compiles and samples its first shard (the first
    # shard of a process takes far longer than the next ones): each rank finishes the
    # shard it has, rank 0 saves it, and no new shard starts.
    job.wait_for(r"CMC: \d+ points in \d+ shards", timeout=400)
    os.kill(job.rank_pids()[ranks - 1], signal.SIGTERM)
    code = job.wait(timeout=300)
    assert code == 3, f"expected exit code 3 after SIGTERM during CMC, got {code}:\n{job.output[-3000:]}"
    # a clean, collective stop: no rank aborts the job (under srun an MPI_Abort turns exit
    # code 3 into 137, and the requeue template would not requeue)
    assert "MPI_Abort" not in job.output and "error on rank" not in job.output, job.output[-3000:]
    saved = sorted(p.name for p in shards.glob("shard_*.npz"))
    assert 1 <= len(saved) < CMC_SHARDS, f"{len(saved)} shards saved: the stop did not come between shards"
    assert not (out / "static" / "cmc" / "result.json").exists()
    resumed = run_command(ranks, config, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    document = json.loads((out / "static" / "cmc" / "result.json").read_text())
    assert document["dispatch"]["shards_reused"] == len(saved), document["dispatch"]
    assert_same_parameters(out / "static" / "cmc" / "result.json", reference, key="mean")
    assert_same_parameters(out / "static" / "cmc" / "result.json", reference, key="std")
