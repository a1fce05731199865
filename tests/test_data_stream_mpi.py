"""The streamed scatter on several ranks: each rank's share equals its slice of the whole point set."""

from __future__ import annotations

import numpy as np
import pytest

from homodyne_mpi.data.points import PointSet, stream_points, upper_triangle_points
from homodyne_mpi.parallel import MPIComm, balanced_counts
from homodyne_mpi.parallel.scatter import scatter_point_stream

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


@pytest.mark.parametrize(("budget", "skew"), [(7, 0), (150, 3), (10**6, 1)])
def test_streamed_scatter_gives_each_rank_its_slice(budget, skew):
    comm = MPIComm()
    n_angles, n_frames = 3, 30
    c2 = np.random.default_rng(5).normal(1.0, 0.1, size=(n_angles, n_frames, n_frames))
    sigma = np.array([0.1, 0.2, 0.4])
    whole = upper_triangle_points(c2, sigma)
    counts = balanced_counts(len(whole), comm.size)
    counts[0] += skew * comm.size  # uneven shares, as a chunk layout gives
    counts[-1] -= skew * comm.size
    blocks = stream_points(lambda a, r0, r1, c0: c2[a, r0:r1, c0:], n_angles, n_frames, sigma, budget) if comm.is_root else None
    capacity = int(counts.max()) + 5
    local = scatter_point_stream(blocks, counts, comm, capacity=capacity)
    start, mine = int(counts[: comm.rank].sum()), int(counts[comm.rank])
    for name in PointSet.column_names():
        column = getattr(local, name)
        assert len(column) == capacity and column.ctypes.data % 64 == 0
        np.testing.assert_array_equal(column[:mine], getattr(whole, name)[start : start + mine])
        assert not np.any(column[mine:])


def test_a_read_error_on_the_root_ends_the_stream_on_every_rank():
    from homodyne_mpi.errors import InputError

    comm = MPIComm()
    c2 = np.ones((1, 12, 12))

    def blocks():
        yield from stream_points(lambda a, r0, r1, c0: c2[a, r0:r1, c0:], 1, 12, [0.1], 20)
        raise InputError("data.h5: dataset 'c2_00001' has 1 NaN/inf values")

    with pytest.raises(InputError, match="c2_00001" if comm.is_root else "rank 0 could not read") as caught:
        scatter_point_stream(blocks() if comm.is_root else None, balanced_counts(66 + 10, comm.size), comm)
    assert caught.value.collective
