"""Batch runs: several data sets in one config, one of them corrupt, on 2 ranks."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_config

from homodyne_mpi.data.simulate import simulate_dataset

TRUTH = [8000.0, -0.3, 30.0]


def simulate_static(path, seed: int, n_frames: int = 50):
    """A small static data set (2 angles, contrast 0.3, offset 1, sigma 0.01, dt 0.1 s) at ``path``."""
    kinds = dict(mode="static", shear_form="paper", q=0.0054, dt=0.1, gap=2e6, phi=[0.0, 90.0])
    simulate_dataset(path, **kinds, n_frames=n_frames, physical=TRUTH, contrast=0.3, offset=1.0, noise_sigma=0.01, seed=seed)
    return path


@pytest.fixture(scope="module")
def batch_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    datasets = []
    for name, seed in (("first", 1), ("third", 3)):
        path = folder / f"{name}.h5"
        simulate_static(path, seed, n_frames=60)
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
        # small data sets on 2 ranks: the automatic choice fits them on two groups of one rank
        assert summary["rank_groups"] == [1, 1] and result["n_ranks"] == 1
        assert result["converged"]
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


# -- rank groups ------------------------------------------------------------------------


def test_group_plan_covers_every_rank_and_data_set_once():
    from homodyne_mpi.parallel.groups import plan_groups

    plan = plan_groups(7, [5, 1, 1, 9, 1, 1, 0, 2], group_size=2)
    assert plan.rank_counts == (3, 2, 2)
    assert [plan.group_of(r) for r in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert plan.leaders() == (0, 3, 5)
    assert sorted(i for group in plan.datasets for i in group) == list(range(8))
    # Largest first to the group that would finish it first: 9 -> group 0 (3 ranks), the
    # unknown size (taken as the largest, 9) -> group 1, 5 -> group 2.
    assert 3 in plan.datasets[0] and 6 in plan.datasets[1] and 0 in plan.datasets[2]
    with pytest.raises(ValueError):
        plan.group_of(7)


def test_group_plan_never_makes_idle_groups_and_one_data_set_uses_every_rank():
    from homodyne_mpi.parallel.groups import auto_group_size, plan_groups

    assert plan_groups(4, [100], group_size=1).rank_counts == (4,)
    assert plan_groups(8, [10, 10], group_size=1).rank_counts == (4, 4)
    assert plan_groups(4, [10] * 8, group_size=64).rank_counts == (4,)
    # One group per data set, up to one per rank ...
    assert auto_group_size(4, [2000] * 8) == 1
    assert auto_group_size(1024, [1e7] * 400) == 2
    assert auto_group_size(1024, [1e7] * 8) == 128
    assert auto_group_size(16, [5]) == 16
    # ... but no rank holds more than the share budget (28 bytes per point)
    assert auto_group_size(1024, [1e9] + [1e6] * 999, share_bytes=28 * 10**8) == 10
    assert auto_group_size(4, [0, 0, 100]) == 1


@pytest.fixture(scope="module")
def eight_data_sets(tmp_path_factory):
    """Eight small static data sets (different noise seeds) and a corrupt ninth file."""
    folder = tmp_path_factory.mktemp("groups")
    datasets = []
    for k in range(8):
        path = folder / f"set{k}.h5"
        simulate_static(path, 10 + k)
        datasets.append({"file_path": str(path), "name": f"set{k}"})
    corrupt = folder / "broken.h5"
    corrupt.write_bytes(b"not HDF5\n" * 100)
    datasets.insert(5, {"file_path": str(corrupt), "name": "broken"})
    return write_config(
        folder / "groups.yaml",
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "experimental_data.file_path": None,
            "experimental_data.datasets": datasets,
            "output.plots": False,
        },
    )


@pytest.mark.timeout(300)
def test_rank_groups_give_the_results_of_one_group(eight_data_sets, tmp_path):
    """Four groups of one rank and one group of four ranks fit every data set alike."""
    runs = {}
    for size in (1, 4):
        out = tmp_path / f"groups_of_{size}"
        completed = run_cli(
            "run", str(eight_data_sets), "--output-dir", str(out), "--group-size", str(size), ranks=4, timeout=240
        )
        assert completed.returncode == 2, completed.stderr[-2000:]
        assert [line for line in completed.stderr.splitlines() if line.startswith("error:")] == [
            line for line in completed.stderr.splitlines() if line.startswith("error: data set 'broken'")
        ]
        summary = json.loads((out / "batch_summary.json").read_text())
        assert summary["rank_groups"] == ([1, 1, 1, 1] if size == 1 else [4])
        names = [entry["name"] for entry in summary["datasets"]]
        assert names == [f"set{k}" for k in range(5)] + ["broken"] + [f"set{k}" for k in range(5, 8)]
        assert [entry["status"] for entry in summary["datasets"]].count("ok") == 8
        assert summary["n_failed"] == 1
        runs[size] = {name: json.loads((out / name / "nlsq" / "result.json").read_text()) for name in names if name != "broken"}
        assert all((out / name / "nlsq" / "fit.h5").exists() for name in runs[size])
    groups = {entry["group"] for entry in json.loads((tmp_path / "groups_of_1" / "batch_summary.json").read_text())["datasets"]}
    assert groups == {0, 1, 2, 3}
    for name, single in runs[1].items():
        grouped = runs[4][name]
        assert single["n_ranks"] == 1 and grouped["n_ranks"] == 4
        # The fit's sums run on a fixed tree over global chunks: the same bits on 1 and 4 ranks.
        assert single["parameters"] == grouped["parameters"], name
