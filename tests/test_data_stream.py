"""Streamed reading: row blocks of the stored matrices give the loaded data set's points and noise."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_layouts import write_aps_u

from homodyne_mpi.data import estimate_noise_sigmas, load_xpcs
from homodyne_mpi.data.points import PointSet, points_before_row, stream_points, upper_triangle_points
from homodyne_mpi.data.stream import PointSource
from homodyne_mpi.errors import InputError
from homodyne_mpi.nlsq.start import scaling_from_data

N_FILE = 41


def symmetric_matrices(seed: int, n_phi: int = 3, n: int = N_FILE) -> np.ndarray:
    """Symmetric matrices near 1 with independent noise (a stand-in for measured c2)."""
    noise = np.random.default_rng(seed).normal(0.0, 0.05, size=(n_phi, n, n))
    return 1.0 + np.triu(noise) + np.triu(noise, 1).transpose(0, 2, 1)


@pytest.mark.parametrize("storage", ["upper", "lower", "full", "float32"])
@pytest.mark.parametrize(("window", "budget"), [((1, None), 1), ((5, 37), 23), ((3, 40), 10**6)])
def test_streamed_points_and_noise_equal_the_loaded_ones(tmp_path, storage, window, budget):
    full = symmetric_matrices(7)
    stored = {
        "upper": np.triu(full),
        "lower": np.tril(full),
        "full": full,
        "float32": np.triu(full).astype(np.float32),
    }[storage]
    path = write_aps_u(tmp_path / "data.h5", phi_list=(30.0, 0.0, 90.0), matrices=list(stored))
    arguments = dict(wavevector_q=0.01, start_frame=window[0], end_frame=window[1], dt=0.1)
    loaded = load_xpcs(path, **arguments)
    sigma = estimate_noise_sigmas(loaded.c2, max_samples=300)
    expected = upper_triangle_points(loaded.c2, sigma)
    with PointSource(path, **arguments) as source:
        assert (source.n_angles, source.n_frames, source.n_points) == (3, loaded.n_frames, len(expected))
        assert np.array_equal(source.phi, loaded.phi)  # sorted like the loader: 0, 30, 90
        assert np.array_equal(source.noise_sigmas(max_samples=300), sigma)  # every third row pair
        assert np.array_equal(source.noise_sigmas(), estimate_noise_sigmas(loaded.c2))  # every pair, read in blocks
        blocks = list(source.point_blocks(sigma, budget))
        for streamed, loaded_value in zip(source.scaling(), scaling_from_data(loaded.c2)):
            assert np.array_equal(streamed, loaded_value)  # the start values of build_problem
        n = loaded.n_frames
        rows = [np.concatenate([source.full_rows(a, r0, min(r0 + 7, n)) for r0 in range(0, n, 7)]) for a in range(3)]
        assert np.array_equal(np.stack(rows), loaded.c2)  # fit.h5's c2_exp, written by row blocks
        for step, r0 in ((3, 0), (3, 6), (3, 4), (5, 1)):  # downsampled fit.h5 rows, on and off the column grid
            for a in range(3):
                expected_rows = loaded.c2[a, r0 : n - 2 : step, ::step]
                assert np.array_equal(source.full_rows(a, r0, n - 2, step), expected_rows), (step, r0)
    assert all(len(block) <= max(budget, loaded.n_frames - 1) for block in blocks)
    for name in PointSet.column_names():
        streamed = np.concatenate([getattr(block, name) for block in blocks])
        assert streamed.dtype == getattr(expected, name).dtype
        assert np.array_equal(streamed, getattr(expected, name)), name


def test_blocks_hold_whole_rows_within_the_budget():
    n = 100
    assert points_before_row(np.array([0, 1, n - 1, n]), n).tolist() == [0, n - 1, n * (n - 1) // 2, n * (n - 1) // 2]
    calls = []

    def read_rows(angle, start, stop, first_column):
        calls.append((angle, start, stop))
        assert first_column == start + 1
        return np.zeros((stop - start, n - first_column))

    sizes = [len(block) for block in stream_points(read_rows, 2, n, 0.1, max_points=1000)]
    assert sum(sizes) == 2 * n * (n - 1) // 2 and max(sizes) <= 1000
    # each block is as large as the budget allows: adding the next row would exceed it
    for (_, _, stop), size in zip(calls, sizes):
        assert stop == n - 1 or size + (n - 1 - stop) > 1000
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_nan_in_a_streamed_block_names_the_dataset_and_rows(tmp_path):
    matrices = list(np.triu(symmetric_matrices(3, n_phi=2)))
    matrices[1][10, 20] = np.nan
    path = write_aps_u(tmp_path / "nan.h5", matrices=matrices)
    yielded = []
    with PointSource(path, wavevector_q=0.01, dt=0.1) as source:
        with pytest.raises(InputError, match=r"c2_00002.*NaN/inf values in window rows 1\.\.11;"):
            for block in source.point_blocks([0.1, 0.1], 400):
                yielded.append(block)
    assert sum(len(block) for block in yielded) == N_FILE * (N_FILE - 1) // 2  # the clean first angle
    with PointSource(path, wavevector_q=0.01, dt=0.1) as source:
        # scattered, the error ends the stream on every rank together (no rank left in a collective)
        from homodyne_mpi.parallel import SerialComm
        from homodyne_mpi.parallel.scatter import scatter_point_source

        with pytest.raises(InputError, match=r"c2_00002.*window rows 1\.\.11;") as caught:
            scatter_point_source(source.point_blocks([0.1, 0.1], 400), source.n_points, SerialComm(), 256)
        assert caught.value.collective


def test_streamed_scatter_on_one_rank_is_the_whole_point_set():
    from homodyne_mpi.parallel import SerialComm
    from homodyne_mpi.parallel.scatter import scatter_point_stream

    c2 = symmetric_matrices(2, n_phi=2, n=25)
    sigma = np.array([0.5, 0.25])
    whole = upper_triangle_points(c2, sigma)
    local = scatter_point_stream(
        stream_points(lambda a, r0, r1, c0: c2[a, r0:r1, c0:], 2, 25, sigma, 50), [len(whole)], SerialComm()
    )
    for name in PointSet.column_names():
        assert np.array_equal(getattr(local, name), getattr(whole, name))
    with pytest.raises(ValueError, match="held 600 points"):
        scatter_point_stream(stream_points(lambda a, r0, r1, c0: c2[a, r0:r1, c0:], 2, 25, sigma, 50), [601], SerialComm())


def test_stream_points_choice():
    from types import SimpleNamespace

    from homodyne_mpi.prepare import STREAM_AUTO_POINTS, streams

    def config(choice):
        return SimpleNamespace(compute=SimpleNamespace(stream_points=choice))

    def size(points):
        return lambda: points

    assert streams(config(True), "nlsq", size(10))
    assert not streams(config(False), "nlsq", size(10 * STREAM_AUTO_POINTS))
    assert streams(config(None), "nlsq", size(STREAM_AUTO_POINTS + 1))  # auto
    assert not streams(config(None), "nlsq", size(STREAM_AUTO_POINTS))
    for method in ("cmc", "both"):  # CMC cuts its shards from every point on rank 0
        assert not streams(config(True), method, size(10 * STREAM_AUTO_POINTS))
        assert not streams(config(None), method, size(10 * STREAM_AUTO_POINTS))
