"""The NLSQ fit does not depend on the number of ranks (mpiexec -n 1, 2, 4)."""

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
        n_frames=100,
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
            "analyzer_parameters.end_frame": 100,
            "experimental_data.file_path": str(data),
            "optimization.nlsq.chunk_size": 1024,
            "optimization.nlsq.uncertainty": "jackknife",
            "optimization.nlsq.jackknife_blocks": 8,
        },
    )


def fitted(folder):
    return json.loads((folder / "flow" / "nlsq" / "result.json").read_text())


@pytest.mark.timeout(600)
def test_fit_agrees_across_rank_counts(laminar_config, tmp_path):
    results = {}
    for ranks in (1, 2, 4):
        out = tmp_path / f"n{ranks}"
        completed = run_cli("run", str(laminar_config), "--output-dir", str(out), ranks=ranks, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[ranks] = fitted(out)
        assert results[ranks]["n_ranks"] == ranks
        assert results[ranks]["converged"], results[ranks]["reason"]
    names = list(results[1]["parameters"])
    reference = np.array([results[1]["parameters"][n]["value"] for n in names])
    for ranks in (2, 4):
        values = np.array([results[ranks]["parameters"][n]["value"] for n in names])
        np.testing.assert_allclose(values, reference, rtol=1e-10, atol=0)
        assert results[ranks]["chi2"] == pytest.approx(results[1]["chi2"], rel=1e-10)
        jackknife = np.array([results[ranks]["parameters"][n]["std_jackknife"] for n in names])
        reference_jackknife = np.array([results[1]["parameters"][n]["std_jackknife"] for n in names])
        np.testing.assert_allclose(jackknife, reference_jackknife, rtol=1e-6)


@pytest.mark.timeout(600)
def test_jackknife_by_replicates_and_by_points_agree(laminar_config, tmp_path):
    """Two ways to spread the refits over 2 ranks: each rank its own blocks on a copy of
    all points (replicates), or all ranks on every refit (points)."""
    import yaml

    results = {}
    for mode in ("replicates", "points"):
        config = yaml.safe_load(laminar_config.read_text())
        config["optimization"]["nlsq"]["jackknife_parallel"] = mode
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(config))
        out = tmp_path / mode
        completed = run_cli("run", str(path), "--output-dir", str(out), ranks=2, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[mode] = fitted(out)
        assert results[mode]["jackknife"]["parallel"] == mode
        assert sum(results[mode]["jackknife"]["block_frames"]) == 100
    names = list(results["points"]["parameters"])
    by_points = np.array([results["points"]["parameters"][n]["std_jackknife"] for n in names])
    by_replicates = np.array([results["replicates"]["parameters"][n]["std_jackknife"] for n in names])
    np.testing.assert_allclose(by_replicates, by_points, rtol=1e-6)
    dof_points, dof_replicates = (results[mode]["jackknife"]["effective_dof"] for mode in ("points", "replicates"))
    assert set(dof_points) == set(names) - {n for n in names if results["points"]["parameters"][n]["fixed"]}
    for name, dof in dof_points.items():
        assert 1.0 <= dof <= results["points"]["jackknife"]["blocks"] and dof == pytest.approx(dof_replicates[name], rel=1e-4)
    assert np.all(by_points > 0)
