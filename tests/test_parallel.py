"""Parallel plumbing without MPI: device flags, partitions, the serial Comm, abort path."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import venv_bin

from homodyne_mpi.errors import InputError
from homodyne_mpi.parallel import SerialComm, balanced_counts, run_guarded, with_host_device_count


def test_device_count_added_when_absent():
    assert with_host_device_count("", 4) == "--xla_force_host_platform_device_count=4"
    assert with_host_device_count("--xla_cpu_enable_fast_math=false", 2) == (
        "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    )


def test_device_count_replaced_keeping_other_flags():
    flags = "--a=1 --xla_force_host_platform_device_count=8 --b=2"
    assert with_host_device_count(flags, 3) == "--a=1 --xla_force_host_platform_device_count=3 --b=2"


def test_device_count_must_be_positive():
    with pytest.raises(ValueError):
        with_host_device_count("", 0)


@pytest.mark.parametrize("n_items, n_parts", [(10, 3), (2, 4), (0, 2), (1000003, 7)])
def test_balanced_counts_cover_everything_evenly(n_items, n_parts):
    counts = balanced_counts(n_items, n_parts)
    assert counts.sum() == n_items and len(counts) == n_parts
    assert counts.max() - counts.min() <= 1
    assert list(counts) == sorted(counts, reverse=True)


def test_serial_comm_collectives_are_identities():
    comm = SerialComm()
    data = np.arange(6.0).reshape(3, 2)
    assert comm.rank == 0 and comm.size == 1 and comm.is_root
    np.testing.assert_array_equal(comm.scatter_rows(data, [3]), data)
    np.testing.assert_array_equal(comm.gather_rows(data), data)
    np.testing.assert_array_equal(comm.allreduce_sum(data), data)
    assert comm.bcast({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError):
        comm.scatter_rows(data, [2])


def test_run_on_root_marks_errors_collective():
    comm = SerialComm()

    def bad():
        raise InputError("data.h5: missing key 'x' -- fix it")

    with pytest.raises(InputError) as caught:
        comm.run_on_root(bad)
    assert caught.value.collective is True
    assert comm.run_on_root(lambda: 41 + 1) == 42


def test_run_guarded_maps_errors_to_exit_codes(capsys):
    comm = SerialComm()
    assert run_guarded(lambda: 0, comm) == 0

    def bad_input():
        raise InputError("file.h5: no angle left -- widen phi ranges")

    assert run_guarded(bad_input, comm) == 2
    assert capsys.readouterr().err.strip() == "error: file.h5: no angle left -- widen phi ranges"

    def crash():
        raise RuntimeError("boom")

    assert run_guarded(crash, comm) == 1
    err = capsys.readouterr().err
    assert "rank 0 of 1 on" in err and "RuntimeError: boom" in err


FAILING_RANK_SCRIPT = textwrap.dedent(
    """
    import time
    from homodyne_mpi.parallel import get_comm, run_guarded

    comm = get_comm()

    def main():
        if comm.rank == 1:
            raise RuntimeError("rank one failed on purpose")
        comm.barrier()   # rank 0 waits here forever unless the job is aborted
        return 0

    raise SystemExit(run_guarded(main, comm))
    """
)


@pytest.mark.timeout(120)
def test_exception_on_one_rank_aborts_the_job_naming_rank_and_host(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK_SCRIPT)
    result = subprocess.run(
        [venv_bin("mpiexec"), "-n", "2", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode != 0
    assert "rank 1 of 2 on" in result.stderr
    assert socket.gethostname() in result.stderr
    assert "RuntimeError: rank one failed on purpose" in result.stderr
