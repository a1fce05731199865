"""``homodyne-mpi run`` with streamed points: the results and fit.h5 of the loaded path, on 1 and 2 ranks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run_cli, write_config
from test_batch import simulate_static


@pytest.fixture(scope="module")
def loaded_and_streamed(tmp_path_factory):
    """A small static data set, its result loaded on one rank, and the configs for both paths."""
    folder = tmp_path_factory.mktemp("stream_run")
    data = folder / "data.h5"
    simulate_static(data, 4)
    common = {"analyzer_parameters.dt": 0.1, "experimental_data.file_path": str(data), "output.plots": False}
    configs = {
        choice: write_config(folder / f"{choice}.yaml", "static", **common, **{"compute.stream_points": choice})
        for choice in (False, True)
    }
    out = folder / "loaded"
    completed = run_cli("run", str(configs[False]), "--method", "nlsq", "--output-dir", str(out), timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "streamed" not in completed.stderr
    return configs, next(out.glob("*/nlsq"))


def fit_values(folder) -> dict:
    """What a fit found: parameters, chi2, iterations, noise levels, start of the data."""
    document = json.loads((folder / "result.json").read_text())
    keys = ("parameters", "chi2", "reduced_chi2", "iterations", "converged", "n_points", "correlation")
    return {**{key: document[key] for key in keys}, "noise_sigma": document["data"]["noise_sigma"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [0, 2])
def test_streamed_run_gives_the_loaded_results_and_fit_file(loaded_and_streamed, tmp_path, ranks):
    configs, loaded = loaded_and_streamed
    out = tmp_path / "streamed"
    completed = run_cli("run", str(configs[True]), "--method", "nlsq", "--output-dir", str(out), ranks=ranks, timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "points streamed to the ranks" in completed.stderr
    streamed = next(out.glob("*/nlsq"))
    assert json.loads((streamed / "result.json").read_text())["n_ranks"] == max(ranks, 1)
    # the same points in the same chunk order: the same bits, whatever the rank count
    assert fit_values(streamed) == fit_values(loaded)
    with h5py.File(loaded / "fit.h5") as expected, h5py.File(streamed / "fit.h5") as got:
        assert set(got) == set(expected)
        assert np.array_equal(got["c2_exp"][()], expected["c2_exp"][()])
        # both paths write the model by the same row blocks (fit_file.write_fit_file)
        assert np.array_equal(got["c2_fit"][()], expected["c2_fit"][()])
        assert np.array_equal(got["residual"][()], expected["residual"][()])
        assert np.array_equal(got["parameters/values"][()], expected["parameters/values"][()])
        assert np.array_equal(got["covariance"][()], expected["covariance"][()])
        assert dict(got.attrs) == dict(expected.attrs)
    if ranks == 0:  # the same command again: the finished streamed data set is skipped
        again = run_cli("run", str(configs[True]), "--method", "nlsq", "--output-dir", str(out), timeout=240)
        assert again.returncode == 0 and "skipped" in again.stderr, again.stderr[-2000:]
