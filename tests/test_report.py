"""``homodyne-mpi report``: the plain-text summary of a results folder.

A results root with a batch summary, one data set holding NLSQ and CMC results (the CMC
one synthetic, in the format of ``docs/architecture.md``, "Results") and one data set that failed; a real NLSQ
run through the command line; and the one-line errors for missing or corrupt results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from homodyne_mpi.errors import InputError
from homodyne_mpi.report import format_report, print_report

TIMEOUT = 180


def nlsq_document(n_angles: int = 2) -> dict:
    names = [f"contrast[{k}]" for k in range(n_angles)] + [f"offset[{k}]" for k in range(n_angles)]
    names += ["D0", "alpha", "D_offset"]
    values = [0.31, 0.29, 1.001, 0.999, 1234.5, -0.25, 7.5][: len(names)]
    parameters = {
        name: {
            "value": value,
            "std": abs(value) * 0.01,
            "std_model": abs(value) * 0.008,
            "std_jackknife": abs(value) * 0.01,
            "fixed": False,
        }
        for name, value in zip(names, values)
    }
    parameters["D_offset"]["fixed"] = True
    return {
        "method": "nlsq",
        "dataset": "good",
        "analysis_mode": "static",
        "shear_form": "paper",
        "per_angle_scaling": "individual",
        "converged": True,
        "reason": "ftol: relative cost reduction 1e-11 <= 1e-10",
        "iterations": 9,
        "chi2": 1803.2,
        "reduced_chi2": 1.0123,
        "n_points": 1790,
        "n_free_parameters": 6,
        "n_ranks": 4,
        "uncertainty": "jackknife",
        "parameters": parameters,
        "data": {
            "source": "/data/good.h5",
            "layout": "aps-u",
            "q": 0.0054,
            "dt": 0.1,
            "dt_source": "config",
            "start_frame": 1,
            "end_frame": 60,
            "phi": [0.0, 90.0],
            "noise_sigma": [0.01, 0.011],
        },
        "timing_s": {"load": 0.5, "compile": 2.25, "fit": 12.5},
        "history": [],
    }


def cmc_document() -> dict:
    shards = [
        {
            "index": 0,
            "n_points": 600,
            "rank": 0,
            "rhat_max": 1.004,
            "ess_min": 812.0,
            "divergences": 0,
            "ok": True,
            "error": None,
            "excluded_reason": None,
            "seconds": 30.5,
        },
        {
            "index": 1,
            "n_points": 600,
            "rank": 1,
            "rhat_max": 1.31,
            "ess_min": 40.0,
            "divergences": 12,
            "ok": False,
            "error": None,
            "excluded_reason": "rhat 1.31 > 1.1",
            "seconds": 31.0,
        },
        {
            "index": 2,
            "n_points": 590,
            "rank": 2,
            "rhat_max": None,
            "ess_min": None,
            "divergences": None,
            "ok": False,
            "error": "FloatingPointError: nan in potential\nTraceback ...",
            "excluded_reason": None,
            "seconds": 2.0,
        },
        {
            "index": 3,
            "n_points": 600,
            "rank": 3,
            "rhat_max": 1.002,
            "ess_min": 950.0,
            "divergences": 1,
            "ok": True,
            "error": None,
            "excluded_reason": None,
            "seconds": 29.0,
        },
    ]
    parameters = {
        name: {"mean": m, "std": s, "q05": m - 1.6 * s, "q50": m, "q95": m + 1.6 * s}
        for name, m, s in (("D0", 1230.0, 12.0), ("alpha", -0.251, 0.004), ("D_offset", 7.1, 0.9), ("contrast[0]", 0.31, 0.001))
    }
    return {
        "method": "cmc",
        "dataset": "good",
        "analysis_mode": "static",
        "parameters": parameters,
        "shards": shards,
        "combination": {"method": "consensus_mc", "n_retained": 2, "excluded": [1, 2]},
        "n_ranks": 4,
        "timing_s": {"sampling": 95.0, "combine": 0.4},
    }


@pytest.fixture
def results_root(tmp_path) -> Path:
    root = tmp_path / "results"
    for method, document in (("nlsq", nlsq_document()), ("cmc", cmc_document())):
        folder = root / "good" / method
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(document))
    summary = {
        "n_datasets": 2,
        "n_failed": 1,
        "method": "both",
        "n_ranks": 4,
        "wall_s": 151.2,
        "datasets": [
            {
                "name": "good",
                "source": "/data/good.h5",
                "status": "ok",
                "error": None,
                "error_type": None,
                "paths": {},
                "timing_s": {},
            },
            {
                "name": "bad",
                "source": "/data/bad.h5",
                "status": "failed",
                "error": "/data/bad.h5: key 'xpcs/qmap' missing -- use an APS file",
                "error_type": "InputError",
                "paths": {},
                "timing_s": {},
            },
        ],
    }
    (root / "batch_summary.json").write_text(json.dumps(summary))
    return root


def test_report_of_a_results_root(results_root, capsys):
    assert print_report(results_root) == 0
    text = capsys.readouterr().out
    assert "batch: 2 data set(s), 1 failed; method both; 4 rank(s); wall 151 s" in text
    # NLSQ: convergence, fit quality, parameters with uncertainties and units, scaling per angle
    assert "converged after 9 iterations" in text
    assert "reduced chi2 1.0123 (chi2 1803.2 over 1790 points, 6 free parameters)" in text
    assert "std = jackknife standard error" in text
    assert re.search(r"D0\s+1234\.5\s+12\.3\s+9\.88\s+12\.3\s+Angstrom\^2 s\^-\(1\+alpha\)", text), text
    assert re.search(r"D_offset \(fixed\)\s+7\.5", text)
    assert re.search(r"1\s+90\s+0\.29\s+0\.0029\s+0\.999", text), text
    assert "timings (s)   load 0.5, compile 2.25, fit 12.50" in text
    assert "ranks         4" in text
    # CMC: summaries, shard health with the excluded and the failed shard and why
    assert re.search(r"D0\s+1230\s+12\s+1210\.8\s+1230\s+1249\.2", text), text
    assert "shards        4 total: 2 retained, 1 excluded, 1 failed" in text
    assert "worst R-hat 1.3100, smallest ESS 40, divergences 13 in all" in text
    assert re.search(r"1\s+1\s+600\s+1\.3100\s+40\s+12\s+31\.0\s+excluded: rhat 1\.31 > 1\.1", text), text
    assert re.search(r"2\s+2\s+590\s+-\s+-\s+-\s+2\.0\s+failed: FloatingPointError: nan in potential$", text, re.M), text
    assert "combination   method consensus_mc; n_retained 2; excluded (2 entries)" in text
    # the data set that failed
    assert "== data set bad (/data/bad.h5) ==" in text
    assert "FAILED (InputError): /data/bad.h5: key 'xpcs/qmap' missing" in text


def test_report_of_one_data_set_folder(results_root):
    text = format_report(results_root / "good")
    assert text.splitlines()[0].endswith("good")
    assert "batch:" not in text and "NLSQ (static" in text and "CMC (static)" in text
    assert format_report(results_root / "good" / "cmc").splitlines()[1:] == text.splitlines()[1:]


def test_report_errors_are_one_line(tmp_path, results_root):
    with pytest.raises(InputError, match="no such folder"):
        format_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results found"):
        format_report(tmp_path / "empty")
    (results_root / "good" / "cmc" / "result.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"cmc/result.json: not a readable result file") as caught:
        format_report(results_root)
    assert "\n" not in str(caught.value)
    result = run_cli("report", str(results_root), timeout=TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a readable result file" in result.stderr + result.stdout


def test_report_command_on_a_real_fit(tmp_path):
    template = tmp_path / "template.yaml"
    assert run_cli("init-config", "--mode", "static", "--output", str(template), timeout=TIMEOUT).returncode == 0
    document = yaml.safe_load(template.read_text())
    document["analyzer_parameters"].update({"dt": 0.1, "start_frame": 1, "end_frame": 30})
    document["experimental_data"]["file_path"] = "sim.h5"
    document["phi_filtering"]["enabled"] = False
    document["initial_parameters"]["values"] = [5000.0, -0.3, 2.0]
    document["output"]["plots"] = False
    document["compute"]["compilation_cache_dir"] = None
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    for args in (
        ("simulate", str(config), "--output", "sim.h5", "--phi=0,90", "--noise", "0.01"),
        ("run", str(config), "--method", "nlsq", "--output-dir", "out"),
    ):
        done = run_cli(*args, timeout=TIMEOUT, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("report", str(tmp_path / "out"), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    saved = json.loads((tmp_path / "out" / "sim" / "nlsq" / "result.json").read_text())
    assert "batch: 1 data set(s), 0 failed; method nlsq; 1 rank(s)" in text
    assert f"reduced chi2 {saved['reduced_chi2']:.4f}" in text
    for name in ("D0", "alpha", "D_offset", "contrast", "offset"):
        assert name in text
    assert f"{saved['parameters']['D0']['value']:.6g}" in text
    assert "ranks         1" in text and "timings (s)   load" in text
    assert "fit.h5        keeps the c2 matrices on all 30 of 30 frames, " in text  # output.fit_matrices: auto, 30 <= 1000
