"""The NLSQ fit has the same bits on any number of ranks (mpiexec -n 1, 2, 3, 4).

A laminar fit from the template's neutral start, with the start search and the
jackknife on: values, std and chi2 in result.json must be equal (==), because the chunks
are global and their sums are added on a fixed tree over chunk indices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, write_config

from homodyne_mpi.data.simulate import simulate_dataset

TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]


@pytest.fixture(scope="module")
def laminar_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    data = folder / "flow.h5"
    simulate_dataset(
        data,
        mode="laminar_flow",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=60,
        gap=2.0e6,
        physical=TRUTH,
        contrast=0.3,
        offset=1.0,
        phi=[-45.0, 0.0, 45.0, 90.0],
        noise_sigma=0.01,
        seed=2,
    )
    return write_config(
        folder / "flow.yaml",
        "laminar_flow",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 60,
            "experimental_data.file_path": str(data),
            "optimization.nlsq.chunk_size": 512,
            "optimization.nlsq.uncertainty": "jackknife",
            "optimization.nlsq.jackknife_blocks": 8,
            "optimization.nlsq.jackknife_iterations": 100,
        },
    )


def fitted(folder):
    return json.loads((folder / "flow" / "nlsq" / "result.json").read_text())


def reported(document: dict) -> list:
    """Every number of result.json a user reads: values, std (all kinds) and chi2."""
    numbers = [document["chi2"], document["iterations"]]
    for entry in document["parameters"].values():
        numbers += [entry["value"], entry["std"], entry["std_model"], entry["std_jackknife"]]
    return numbers


@pytest.mark.timeout(600)
def test_fit_is_bit_identical_across_rank_counts(laminar_config, tmp_path):
    """-n 3 spreads the jackknife refits by rank (each rank its own blocks on a copy of
    all points), the others run every refit on all ranks: the same bits either way."""
    import yaml

    by_replicates = yaml.safe_load(laminar_config.read_text())
    by_replicates["optimization"]["nlsq"]["jackknife_parallel"] = "replicates"
    (tmp_path / "replicates.yaml").write_text(yaml.safe_dump(by_replicates))
    results = {}
    for ranks in (1, 2, 3, 4):
        out = tmp_path / f"n{ranks}"
        config = tmp_path / "replicates.yaml" if ranks == 3 else laminar_config
        completed = run_cli("run", str(config), "--output-dir", str(out), ranks=ranks, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[ranks] = fitted(out)
        assert results[ranks]["n_ranks"] == ranks
        assert results[ranks]["converged"], results[ranks]["reason"]
        assert results[ranks]["jackknife"]["refits_converged"] == results[ranks]["jackknife"]["blocks"]
    assert results[3]["jackknife"]["parallel"] == "replicates" and results[2]["jackknife"]["parallel"] == "points"
    assert results[1]["jackknife"]["effective_dof"] == results[3]["jackknife"]["effective_dof"]
    assert len({results[ranks]["jackknife"]["passes"] for ranks in results}) == 1  # by rank: all ranks' refits counted
    for ranks in (2, 3, 4):
        assert reported(results[ranks]) == reported(results[1]), ranks
    values = np.array([results[1]["parameters"][n]["value"] for n in ("D0", "gamma_dot_t0", "phi0")])
    np.testing.assert_allclose(values, [TRUTH[0], TRUTH[3], TRUTH[6]], rtol=0.2)


def chunk_rows(n_chunks: int, width: int = 7) -> np.ndarray:
    """Chunk sums spanning 16 decades, so any change of summation order changes bits."""
    rng = np.random.default_rng(n_chunks)
    return rng.standard_normal((n_chunks, width)) * 10.0 ** rng.integers(-8, 8, (n_chunks, width))


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5, 8, 13, 100])
def test_chunk_tree_sum_has_the_same_bits_for_every_split_into_ranks(n_chunks):
    from homodyne_mpi.parallel import SerialComm
    from homodyne_mpi.parallel.chunk_order import ChunkLayout, combine_cover, local_cover

    rows = chunk_rows(n_chunks)
    serial, _ = SerialComm().sum_in_chunk_order(rows, 0, n_chunks)
    for n_ranks in range(1, 9):
        layout = ChunkLayout(n_chunks * 10, 10, n_ranks)
        nodes = {}
        for rank in range(n_ranks):
            first, stop = layout.chunks_of(rank)
            for level, index, value in local_cover(rows[first:stop], first, n_chunks):
                assert (level, index) not in nodes
                nodes[(level, index)] = value
        assert np.array_equal(combine_cover(nodes, n_chunks), serial), n_ranks
    np.testing.assert_allclose(serial, rows.sum(axis=0), rtol=1e-12, atol=1e-12 * np.abs(rows).max())


def test_chunk_layout_gives_whole_balanced_runs_and_covers_every_point():
    from homodyne_mpi.parallel.chunk_order import chunk_layout

    layout = chunk_layout(10_000, 1024, 3)
    assert layout.chunk == 1024 and layout.n_chunks == 10
    assert [layout.chunks_of(r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert layout.point_counts().tolist() == [4096, 3072, 10_000 - 7168]
    assert [layout.capacity_of(r) for r in range(3)] == [4096, 3072, 3072]
    small = chunk_layout(300, 8192, 4)
    assert small.chunk == 512 and small.n_chunks == 1 and small.point_counts().tolist() == [300, 0, 0, 0]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_mpi_chunk_order_sum_equals_the_serial_one():
    from homodyne_mpi.parallel import MPIComm, SerialComm
    from homodyne_mpi.parallel.chunk_order import chunk_layout

    comm = MPIComm()
    for n_chunks in (1, 3, comm.size + 1, 37):
        rows = chunk_rows(n_chunks)
        layout = chunk_layout(n_chunks * 256, 256, comm.size)
        first, stop = layout.chunks_of(comm.rank)
        total, flags = comm.sum_in_chunk_order(rows[first:stop], first, n_chunks, flag=float(comm.rank == 1))
        assert np.array_equal(total, SerialComm().sum_in_chunk_order(rows, 0, n_chunks)[0])
        assert flags == 1.0


@pytest.mark.parametrize("n_points, stride, n_ranks", [(1000, 7, 3), (1003, 1, 2), (97, 13, 4), (50, 100, 2), (10, 3, 4)])
def test_search_subsample_is_every_stride_th_global_point_on_any_rank_count(n_points, stride, n_ranks):
    from homodyne_mpi.nlsq.search import subsample_indices

    bounds = np.linspace(0, n_points, n_ranks + 1).astype(int)
    picked = [first + subsample_indices(stop - first, first, stride) for first, stop in zip(bounds[:-1], bounds[1:])]
    expected = [k for k in range(n_points) if k % stride == 0]
    np.testing.assert_array_equal(np.concatenate(picked), expected)


def test_search_candidates_are_the_start_and_the_rest_of_the_grid_each_once():
    """A start that lies on the grid (the template's D0 1000, alpha 0) is scored and refined once."""
    from homodyne_mpi.model import ParameterLayout
    from homodyne_mpi.nlsq.search import candidate_starts, parameter_grid

    layout = ParameterLayout("static", 2, "individual")
    theta0 = layout.join([0.5, 0.5], [1.0, 1.0], [1000.0, 0.0, 0.0])
    lower = layout.join([0.0, 0.0], [0.5, 0.5], [100.0, -2.0, -1e4])
    upper = layout.join([1.0, 1.0], [1.5, 1.5], [1e5, 2.0, 1e4])
    candidates = np.array(candidate_starts(theta0, lower, upper, np.ones(len(theta0), bool), layout))
    d0_grid, alpha_grid = parameter_grid("D0", 1000.0, 100.0, 1e5), parameter_grid("alpha", 0.0, -2.0, 2.0)
    assert 1000.0 in d0_grid and 0.0 in alpha_grid  # the start is a grid point
    assert len(candidates) == len(d0_grid) * len(alpha_grid)
    assert len(np.unique(candidates, axis=0)) == len(candidates)
    np.testing.assert_array_equal(candidates[0], theta0)
