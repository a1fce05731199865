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
    for ranks in (2, 3, 4):
        assert reported(results[ranks]) == reported(results[1]), ranks
    values = np.array([results[1]["parameters"][n]["value"] for n in ("D0", "gamma_dot_t0", "phi0")])
    np.testing.assert_allclose(values, [TRUTH[0], TRUTH[3], TRUTH[6]], rtol=0.2)
