"""Catch a wrong launch before any work: N copies of one fit instead of one fit on N ranks.

Two classic mistakes give each of several processes a world of one rank (each fits all the data
alone, all exit 0): ``srun`` without the MPI plugin the library needs (or a ``--ntasks=4`` batch
script without ``srun``/``mpiexec``), and the ``mpiexec`` of another MPI than ``mpi4py`` loaded.
``check_launch`` raises a collective ``ConfigError`` (exit code 2) saying how to launch, from the
environment and the MPI version string only. ``HOMODYNE_LAUNCH_CHECK=0`` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError, collective
from .comm import Comm, MPIComm, launcher_size

SRUN_HINT = (
    "inside the job use `srun --mpi=pmi2 homodyne-mpi run CONFIG` (MPICH, Intel MPI, MVAPICH; "
    "Open MPI: `srun --mpi=pmix`; `srun --mpi=list` shows the plugins) or "
    "`mpiexec -n $SLURM_NTASKS homodyne-mpi run CONFIG` with the mpiexec of the MPI that mpi4py uses"
)


def _int(environ: Mapping[str, str], key: str) -> int:
    """``int(environ[key])``, 0 when absent or not a number."""
    value = environ.get(key, "").strip()
    return int(value) if value.isdigit() else 0


def slurm_task_count(environ: Mapping[str, str]) -> int:
    """Processes Slurm started for this step: ``SLURM_STEP_NUM_TASKS`` inside ``srun``, the job's
    ``SLURM_NTASKS`` in the batch script (no step yet), 0 outside Slurm."""
    if "SLURM_STEP_NUM_TASKS" in environ:
        return _int(environ, "SLURM_STEP_NUM_TASKS")
    if "SLURM_JOB_ID" in environ or "SLURM_JOBID" in environ or "SLURM_NTASKS" in environ:
        return _int(environ, "SLURM_NTASKS") or _int(environ, "SLURM_NPROCS")
    return 0


def launcher_family(environ: Mapping[str, str]) -> str:
    """``openmpi`` (Open MPI's mpirun/prterun), ``pmi`` (MPICH hydra, srun --mpi=pmi2), ``pmix``, or ``""``."""
    if any(key.startswith("OMPI_COMM_WORLD_") for key in environ):
        return "openmpi"
    if "PMI_SIZE" in environ or "PMI_RANK" in environ:
        return "pmi"
    if "PMIX_RANK" in environ or "PMIX_NAMESPACE" in environ:
        return "pmix"
    return ""


def library_family(version: str) -> str:
    """``openmpi``, ``mpich`` (MPICH and its derivatives: Intel MPI, MVAPICH, Cray) or ``""``."""
    text = version.lower()
    if "open mpi" in text:
        return "openmpi"
    if any(name in text for name in ("mpich", "intel(r) mpi", "mvapich", "cray mpi")):
        return "mpich"
    return ""


def library_version(comm: Comm) -> str:
    """First line of the loaded MPI library's version string ("" for ``SerialComm``)."""
    if not isinstance(comm, MPIComm):
        return ""
    from mpi4py import MPI

    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


def _launch_error(message: str) -> ConfigError:
    return collective(ConfigError(message))


def check_launch(comm: Comm, environ: Mapping[str, str] | None = None, version: str | None = None) -> None:
    """Raise a collective ``ConfigError`` (exit 2; every rank reaches the same verdict) when the launch would
    run N copies of the same fit. ``environ`` and ``version`` (of the MPI library) default to this process's."""
    environ = os.environ if environ is None else environ
    if environ.get("HOMODYNE_LAUNCH_CHECK", "").strip().lower() in ("0", "no", "false", "off"):
        return
    version = library_version(comm) if version is None else version
    size_key, announced = launcher_size(environ)
    launcher = launcher_family(environ)
    library = library_family(version)
    loaded = f"mpi4py loaded {version}" if version else "MPI is not in use (HOMODYNE_MPI=0 or no mpi4py)"

    if launcher == "openmpi" and library == "mpich":
        raise _launch_error(
            f"started by Open MPI's mpirun/mpiexec ({size_key}={announced}) but {loaded}: every process would run "
            f"alone -- launch with the mpiexec of the MPI that mpi4py uses (`python -m mpi4py --mpi-library` shows it; "
            f"for the mpich wheel it is the mpiexec in the same environment's bin/), or rebuild mpi4py against Open MPI "
            f"(`env MPICC=mpicc pip install --no-binary=mpi4py --force-reinstall mpi4py`)"
        )
    if announced > 1 and comm.size != announced:
        if launcher == "pmi" and library == "openmpi":
            how = "launch with Open MPI's mpirun, or `srun --mpi=pmix`"
        elif launcher == "pmix" and library == "mpich":
            how = "launch with `srun --mpi=pmi2` or the mpiexec of the MPI that mpi4py uses"
        else:
            how = "launch with the mpiexec of the MPI that mpi4py uses (`python -m mpi4py --mpi-library` shows it)"
        raise _launch_error(
            f"the launcher started {announced} processes ({size_key}={announced}) but the MPI world has {comm.size} "
            f"rank(s) ({loaded}): the launcher belongs to another MPI, so each process would run the fit alone -- {how}"
        )
    tasks = slurm_task_count(environ)
    if tasks > 1 and comm.size == 1 and announced == 0:
        if "SLURM_STEP_NUM_TASKS" in environ:
            what = (
                f"srun started {tasks} tasks but each is an MPI world of 1 rank (no PMI environment: srun's MPI plugin "
                f"is missing or wrong), so each would run the whole fit alone"
            )
        else:
            what = f"the Slurm job has {tasks} tasks but this is a single process started without srun or mpiexec, so {tasks - 1} task(s) would sit idle"
        raise _launch_error(f"{what} -- {SRUN_HINT}; for one process ask for --ntasks=1")
