"""Comm collectives on several ranks, compared with the serial answer (pytest-mpi)."""

from __future__ import annotations

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
