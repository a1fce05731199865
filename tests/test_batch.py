"""Batch runs: several data sets in one config, one of them corrupt, on 2 ranks."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_config

from homodyne_mpi.data.simulate import simulate_dataset

TRUTH = [8000.0, -0.3, 30.0]


@pytest.fixture(scope="module")
def batch_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    datasets = []
    for name, seed in (("first", 1), ("third", 3)):
        path = folder / f"{name}.h5"
        simulate_dataset(
            path, mode="static", shear_form="paper", q=0.0054, dt=0.1, n_frames=60, gap=2e6,
            physical=TRUTH, contrast=0.3, offset=1.0, phi=[0.0, 90.0], noise_sigma=0.01, seed=seed,
        )
        datasets.append({"file_path": str(path), "name": name})
    corrupt = folder / "second.h5"
    corrupt.write_bytes(b"this is not an HDF5 file\n" * 100)
    datasets.insert(1, {"file_path": str(corrupt), "name": "second"})
    return write_config(
        folder / "batch.yaml",
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 60,
            "experimental_data.file_path": None,
            "experimental_data.datasets": datasets,
        },
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ranks", [2])
def test_batch_keeps_good_results_and_records_the_failure(batch_config, tmp_path, ranks):
    out = tmp_path / "results"
    completed = run_cli("run", str(batch_config), "--output-dir", str(out), ranks=ranks, timeout=240)
    assert completed.returncode == 2, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "second" in errors[0] and "second.h5" in errors[0]
    assert "Traceback" not in completed.stderr
    summary = json.loads((out / "batch_summary.json").read_text())
    status = {entry["name"]: entry for entry in summary["datasets"]}
    assert [entry["name"] for entry in summary["datasets"]] == ["first", "second", "third"]
    assert status["first"]["status"] == "ok" and status["third"]["status"] == "ok"
    assert status["second"]["status"] == "failed" and status["second"]["error_type"] == "InputError"
    assert summary["n_failed"] == 1 and summary["n_ranks"] == ranks
    for name in ("first", "third"):
        result = json.loads((out / name / "nlsq" / "result.json").read_text())
        assert result["converged"] and result["n_ranks"] == ranks
        assert abs(result["parameters"]["D0"]["value"] - TRUTH[0]) < 4 * result["parameters"]["D0"]["std"]
        assert (out / name / "nlsq" / "fit.h5").exists()
        assert status[name]["timing_s"]["load"] > 0
    assert not (out / "second" / "nlsq").exists()
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.timeout(300)
def test_rerun_skips_finished_data_sets(batch_config, tmp_path):
    out = tmp_path / "results"
    first = run_cli("run", str(batch_config), "--output-dir", str(out), timeout=240)
    assert first.returncode == 2
    stamp = (out / "first" / "nlsq" / "result.json").stat().st_mtime_ns
    again = run_cli("run", str(batch_config), "--output-dir", str(out), timeout=240)
    assert again.returncode == 2
    assert "first: finished results of this config and data exist" in again.stderr
    assert (out / "first" / "nlsq" / "result.json").stat().st_mtime_ns == stamp
    fresh = run_cli("run", str(batch_config), "--output-dir", str(out), "--fresh", timeout=240)
    assert fresh.returncode == 2
    assert (out / "first" / "nlsq" / "result.json").stat().st_mtime_ns != stamp
