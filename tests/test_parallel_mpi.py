"""Comm collectives on several ranks, compared with the serial answer (pytest-mpi)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from homodyne_mpi.errors import InputError
from homodyne_mpi.parallel import MPIComm, balanced_counts

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def comm():
    return MPIComm()


def test_packed_allreduce_equals_serial_sum(comm):
    rng = np.random.default_rng(11)
    parts = rng.standard_normal((comm.size, 1000)) * 10.0 ** rng.integers(-8, 8, (comm.size, 1000))
    total = comm.allreduce_sum(parts[comm.rank])
    np.testing.assert_allclose(total, parts.sum(axis=0), rtol=1e-14, atol=0)


def test_scatter_then_gather_rows_round_trips(comm):
    n_rows = 1001
    full = np.arange(n_rows * 3, dtype=np.float64).reshape(n_rows, 3) if comm.is_root else None
    counts = balanced_counts(n_rows, comm.size)
    local = comm.scatter_rows(full, counts)
    start = int(counts[: comm.rank].sum())
    expected = np.arange(n_rows * 3, dtype=np.float64).reshape(n_rows, 3)[start : start + counts[comm.rank]]
    np.testing.assert_array_equal(local, expected)
    gathered = comm.gather_rows(local)
    if comm.is_root:
        np.testing.assert_array_equal(gathered, np.arange(n_rows * 3, dtype=np.float64).reshape(n_rows, 3))
    else:
        assert gathered is None


def test_scatter_integer_columns_with_empty_ranks(comm):
    n_rows = comm.size - 1
    full = np.arange(n_rows, dtype=np.int32) if comm.is_root else None
    local = comm.scatter_rows(full, balanced_counts(n_rows, comm.size))
    assert local.dtype == np.int32
    assert len(local) == (1 if comm.rank < n_rows else 0)


def test_root_error_raised_on_every_rank(comm):
    def load():
        raise InputError("x.h5: bad -- fix")

    with pytest.raises(InputError) as caught:
        comm.run_on_root(load)
    assert caught.value.collective
    assert comm.run_on_root(lambda: comm.rank + 7) == 7


def test_split_makes_sub_communicators(comm):
    sub = comm.split(comm.rank % 2)
    members = sub.allreduce_sum(np.array([1.0]))[0]
    assert members == len(range(comm.rank % 2, comm.size, 2))


def waiting_cpu_seconds(comm, busy_root) -> float:
    """CPU seconds this rank used while ``busy_root`` (a collective call in which rank 0 sleeps
    ``ROOT_SLEEP_S``) ran; the largest over the ranks other than 0, on every rank."""
    comm.barrier()
    start = time.process_time()
    busy_root()
    used = time.process_time() - start
    return max(comm.allgather_rows(np.array([[used]]))[1:, 0])


ROOT_SLEEP_S = 1.5


@pytest.mark.parametrize("wait", ["run_on_root", "task_farm"])
def test_ranks_waiting_for_rank_0_sleep_instead_of_spinning(comm, wait):
    """MPI's blocking calls spin a core while they wait; on a node shared with rank 0's chains that
    halved its speed (a one-shard CMC under mpiexec -n 2: rank 1 at 96% CPU in a broadcast). A rank
    that waits 1.5 s for rank 0 must use under 0.3 s of CPU (a spinning one uses about 1.5 s)."""
    from homodyne_mpi.parallel.dispatch import Task, run_task_farm

    def sleep_on_root():
        if wait == "run_on_root":
            comm.run_on_root(lambda: time.sleep(ROOT_SLEEP_S))
        else:  # one task: rank 0's own worker takes it, every other rank is out of work at once
            tasks = [Task({"k": 0})] if comm.is_root else None
            run_task_farm(comm, tasks, lambda header, arrays: (time.sleep(ROOT_SLEEP_S) or {}, {}))

    assert waiting_cpu_seconds(comm, sleep_on_root) < 0.3
