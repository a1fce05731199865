"""A launch that would run N copies of one fit is stopped with exit code 2 (parallel.launch_check).

The unit tests give ``check_launch`` the environment and MPI library version of each
situation; the CLI tests run ``homodyne-mpi run`` with the environment of a wrong launch
and check that it stops before any work. The real ``srun --mpi=none`` and a batch script
without srun are in tests/test_slurm.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import run_cli, write_config

from homodyne_mpi.errors import ConfigError
from homodyne_mpi.parallel.launch_check import check_launch, launcher_family, library_family, slurm_task_count

MPICH = "MPICH Version: 4.2.1"
OPENMPI = "Open MPI v5.0.3, package: Open MPI builder Distribution, ident: 5.0.3, repo rev: v5.0.3, Apr 08, 2024"
INTEL = "Intel(R) MPI Library 2021.11 for Linux* OS"


@dataclass
class FakeComm:
    size: int
    rank: int = 0


def verdict(size: int, env: dict, version: str = MPICH) -> str | None:
    """``None`` when the launch is fine, else the error message (checked to be one line, exit 2, collective)."""
    try:
        check_launch(FakeComm(size), environ=env, version=version)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and error.exit_code == 2 and error.collective
        return message
    return None


def test_plain_process_and_correct_launches_pass():
    assert verdict(1, {}) is None
    assert verdict(1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    # srun --mpi=pmi2 with MPICH
    assert (
        verdict(4, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "PMI_SIZE": "4", "PMI_RANK": "1"})
        is None
    )
    # mpiexec (hydra) inside an allocation: hydra's proxy is a one-task step
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "1",
        "SLURM_STEP_NUM_TASKS": "1",
        "PMI_SIZE": "4",
        "PMI_RANK": "0",
        "MPI_LOCALNRANKS": "4",
    }
    assert verdict(4, env) is None
    # Open MPI's mpirun with Open MPI, and srun --mpi=pmix with Open MPI
    assert verdict(2, {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, OPENMPI) is None
    assert verdict(2, {"SLURM_STEP_NUM_TASKS": "2", "PMIX_RANK": "0", "PMIX_NAMESPACE": "slurm.pmix.7.0"}, OPENMPI) is None
    # Intel MPI (MPICH family) under hydra
    assert verdict(2, {"PMI_SIZE": "2", "PMI_RANK": "0"}, INTEL) is None
    # an explicit one-process launch inside a bigger allocation is the user's choice
    assert verdict(1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "PMI_SIZE": "1", "PMI_RANK": "0"}) is None


def test_srun_without_the_mpi_plugin_is_caught():
    env = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2"}
    message = verdict(1, env)
    assert message.startswith("srun started 4 tasks but each is an MPI world of 1 rank")
    assert (
        "srun --mpi=pmi2 homodyne-mpi run CONFIG" in message and "--mpi=pmix" in message and "mpiexec -n $SLURM_NTASKS" in message
    )


def test_batch_script_running_the_program_without_srun_is_caught():
    message = verdict(1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
    assert message.startswith("the Slurm job has 4 tasks but this is a single process started without srun or mpiexec")
    assert "--ntasks=1" in message


def test_mpiexec_of_another_mpi_is_caught():
    message = verdict(1, {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}, MPICH)
    assert message.startswith("started by Open MPI's mpirun/mpiexec (OMPI_COMM_WORLD_SIZE=4) but mpi4py loaded MPICH")
    message = verdict(1, {"PMI_SIZE": "4", "PMI_RANK": "0", "PMI_FD": "5"}, OPENMPI)
    assert "the launcher started 4 processes (PMI_SIZE=4) but the MPI world has 1 rank(s)" in message
    assert "Open MPI's mpirun" in message
    message = verdict(1, {"SLURM_STEP_NUM_TASKS": "2", "PMIX_RANK": "0", "PMIX_SIZE": "2"}, MPICH)
    assert "srun --mpi=pmi2" in message
    # MPI switched off by hand under a launcher that started several processes
    assert "HOMODYNE_MPI=0" in verdict(1, {"PMI_SIZE": "2", "PMI_RANK": "0"}, "")


def test_the_check_can_be_switched_off():
    env = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "HOMODYNE_LAUNCH_CHECK": "0"}
    assert verdict(1, env) is None


def test_families_and_task_counts():
    assert library_family(MPICH) == "mpich" and library_family(INTEL) == "mpich" and library_family(OPENMPI) == "openmpi"
    assert library_family("MVAPICH2 Version 2.3.7") == "mpich" and library_family("") == ""
    assert launcher_family({"OMPI_COMM_WORLD_SIZE": "2"}) == "openmpi"
    assert launcher_family({"PMI_RANK": "0", "PMI_SIZE": "2"}) == "pmi"
    assert launcher_family({"PMIX_RANK": "0"}) == "pmix" and launcher_family({}) == ""
    assert slurm_task_count({}) == 0
    assert slurm_task_count({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}) == 8
    assert slurm_task_count({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"}) == 2


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "c.yaml", "static", **{"experimental_data.file_path": str(tmp_path / "missing.h5")})


@pytest.mark.timeout(120)
def test_cli_stops_srun_without_plugin_before_reading_anything(config, tmp_path):
    env = {"SLURM_JOB_ID": "99", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    done = run_cli("run", str(config), "--output-dir", str(tmp_path / "out"), env=env, timeout=100)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "srun started 2 tasks" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_cli_stops_an_open_mpi_launcher_with_mpich_loaded(config, tmp_path):
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    done = run_cli("run", str(config), "--output-dir", str(tmp_path / "out"), env=env, timeout=100)
    assert done.returncode == 2, done.stderr
    assert "error: started by Open MPI's mpirun/mpiexec (OMPI_COMM_WORLD_SIZE=2) but mpi4py loaded MPICH" in done.stderr
    assert not (tmp_path / "out").exists()
