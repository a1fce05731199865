"""Issue 14's correlator case, fitted by the command line with default settings (jackknife).

A static speckle file like one written by a correlator from simulated speckle frames (4
angles, 200 frames, 79,600 points, truth ``D0`` 2e4, ``alpha`` -0.3, ``D_offset`` 5e3, frame
terms three times the point noise; ``scripts/bench_uncertainty.py --correlator --frame-noise
0.03``, seed 9). Ordinary least squares runs ``D_offset`` onto its upper bound 1e4 while
``D0``, ``alpha`` and ``D_offset`` trade along a valley. The fit must converge well inside
its budget, flag the bound, keep its jackknife refits converged, report errors several
times the independent-noise ones that still hold the truth, and warn that ``D0``,
``alpha`` and ``D_offset`` are degenerate, in ``result.json``, the log and the report.
"""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli, write_config

from homodyne_mpi.data.simulate import simulate_dataset

TRUTH = {"D0": 2.0e4, "alpha": -0.3, "D_offset": 5.0e3}


def correlator_case(folder):
    data = folder / "correlator.h5"
    simulate_dataset(
        data,
        mode="static",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=200,
        gap=2e6,
        physical=list(TRUTH.values()),
        contrast=0.3,
        offset=1.0,
        phi=[0.0, 45.0, 90.0, 135.0],
        noise_sigma=0.01,
        seed=9,
        noise_model="speckle",
        frame_noise_sigma=0.03,
    )
    settings = {
        "analyzer_parameters.dt": 0.1,
        "analyzer_parameters.end_frame": 200,
        "experimental_data.file_path": str(data),
        "optimization.nlsq.uncertainty": "jackknife",
        "output.plots": False,
    }
    return write_config(folder / "correlator.yaml", "static", **settings)


def test_correlator_case_converges_on_the_bound_and_warns_of_the_valley(tmp_path):
    config = correlator_case(tmp_path)
    run = run_cli("run", str(config), "--output", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr[-3000:]
    (result_path,) = (tmp_path / "out").glob("*/nlsq/result.json")
    doc = json.loads(result_path.read_text())
    assert doc["converged"] and doc["iterations"] <= 20, (doc["reason"], doc["iterations"])
    assert doc["at_bound"] == {"D_offset": "upper"}
    assert doc["parameters"]["D_offset"]["at_bound"] == "upper"
    jackknife = doc["jackknife"]
    assert jackknife["refits_converged"] >= 0.9 * jackknife["blocks"]
    for name, truth in TRUTH.items():
        entry = doc["parameters"][name]
        assert entry["std"] >= 3 * entry["std_model"], (name, entry)
        assert abs(entry["value"] - truth) < 3 * entry["std"], (name, entry)
    degeneracy = doc["degeneracy"]
    assert degeneracy["warning"]
    named = [set(pair[:2]) for pair in degeneracy["pairs"]] + [set(g["parameters"]) for g in degeneracy["groups"]]
    assert any({"D0", "D_offset"} <= names for names in named), degeneracy
    (group,) = [g for g in degeneracy["groups"] if {"D0", "D_offset"} <= set(g["parameters"])]
    assert group["eigenvalue"] < 0.01 and min(group["multiple_correlation"].values()) > 0.99
    correlation = np.array(doc["correlation"]["matrix"])
    assert np.allclose(correlation, correlation.T) and np.all(np.abs(correlation) <= 1 + 1e-12)
    log = run.stderr
    assert "D0, alpha and D_offset are nearly degenerate together" in log
    assert "D_offset is held at its upper bound" in log
    report = run_cli("report", str(tmp_path / "out"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "D0, alpha and D_offset are nearly degenerate together" in report.stdout
    assert "D(t)" in report.stdout
