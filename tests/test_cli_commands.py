"""The sub-commands through the real command line, on tiny data.

- ``simulate`` -> ``validate`` round trips for both layouts and both modes;
- ``init-config`` writes templates that validate, and refuses to overwrite;
- ``--help`` of every sub-command;
- ``run`` end to end on a tiny static data set: the files of ``docs/architecture.md``, "Results".

Every command runs as ``python -m homodyne_mpi`` in a subprocess (``run_cli``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import run_cli

TIMEOUT = 120
N_FRAMES = 30
PHI = (0.0, 45.0, 90.0)
LAYOUTS = ("aps-u", "aps-legacy")
MODES = ("static", "laminar_flow")
SUBCOMMANDS = ("run", "simulate", "validate", "init-config", "plot", "report")

PHYSICAL_NAMES = {
    "static": ["D0", "alpha", "D_offset"],
    "laminar_flow": ["D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"],
}

RESULT_KEYS = {
    "method",
    "analysis_mode",
    "shear_form",
    "converged",
    "iterations",
    "chi2",
    "reduced_chi2",
    "n_points",
    "n_ranks",
    "parameters",
    "timing_s",
}
PARAMETER_KEYS = {"value", "std", "std_model", "std_jackknife"}
FIT_DATASETS = ("c2_exp", "c2_fit", "residual", "t", "phi", "covariance")


def describe(result) -> str:
    return (
        f"command: {' '.join(map(str, result.args))}\nexit code: {result.returncode}\n"
        f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n--- stderr (tail) ---\n{result.stderr[-4000:]}"
    )


def check(result, code: int = 0):
    assert "Traceback" not in result.stderr, describe(result)
    assert result.returncode == code, describe(result)
    return result


def small_config(folder: Path, mode: str, data_file: Path, name: str | None = None) -> Path:
    """``init-config --mode MODE`` edited to a tiny grid: dt 0.1, 30 frames, no filtering."""
    template = folder / f"template_{mode}.yaml"
    if not template.exists():
        check(run_cli("init-config", "--mode", mode, "--output", str(template), timeout=TIMEOUT))
    document = yaml.safe_load(template.read_text())
    analyzer = document["analyzer_parameters"]
    analyzer["dt"] = 0.1
    analyzer["start_frame"] = 1
    analyzer["end_frame"] = N_FRAMES
    analyzer["scattering"]["wavevector_q"] = 0.0054
    document["experimental_data"]["file_path"] = str(data_file)
    document["phi_filtering"]["enabled"] = False
    document["output"]["plots"] = False
    document["compute"]["compilation_cache_dir"] = None
    document["optimization"]["nlsq"]["uncertainty"] = "model"
    if mode == "laminar_flow":
        analyzer["geometry"]["stator_rotor_gap"] = 1.0e5
        names = document["initial_parameters"]["parameter_names"]
        values = dict(zip(names, document["initial_parameters"]["values"]))
        values.update(gamma_dot_t0=0.01, phi0=2.0)
        document["initial_parameters"]["values"] = [values[n] for n in names]
    path = folder / f"{name or data_file.stem}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- simulate -> validate --------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One simulated file per (layout, mode), with its config and simulate's result."""
    folder = tmp_path_factory.mktemp("cli_simulate")
    made = {}
    for mode in MODES:
        for layout in LAYOUTS:
            data = folder / f"{mode}_{layout}.h5"
            config = small_config(folder, mode, data)
            result = run_cli(
                "simulate",
                str(config),
                "--output",
                str(data),
                "--layout",
                layout,
                "--phi",
                ",".join(f"{p:g}" for p in PHI),
                "--noise",
                "0.001",
                "--seed",
                "3",
                timeout=TIMEOUT,
            )
            made[mode, layout] = (config, data, result)
    return made


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_simulate_writes_file_and_truth(simulated, mode, layout):
    config, data, result = simulated[mode, layout]
    check(result)
    assert data.is_file()
    assert f"({layout}, {len(PHI)} angles, {N_FRAMES} frames)" in result.stdout, describe(result)
    truth_file = Path(f"{data}.truth.json")
    assert truth_file.is_file()
    truth = json.loads(truth_file.read_text())
    assert json.dumps(truth)  # plain JSON
    with h5py.File(data, "r") as h5:
        if layout == "aps-u":
            assert "xpcs/twotime/correlation_map/c2_00001" in h5
            assert "xpcs/qmap/dynamic_v_list_dim1" in h5
            stored = h5["xpcs/twotime/correlation_map/c2_00001"]
        else:
            assert "exchange/C2T_all" in h5 and "xpcs/dphilist" in h5
            stored = h5["exchange/C2T_all"][sorted(h5["exchange/C2T_all"])[0]]
        assert stored.shape == (N_FRAMES, N_FRAMES)
        assert stored.dtype == np.float64
        matrix = stored[()]
        assert np.all(np.tril(matrix, -1) == 0), "matrices are stored as upper-triangular halves"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_simulate_then_validate_round_trip(simulated, mode, layout):
    config, data, _ = simulated[mode, layout]
    result = check(run_cli("validate", str(config), timeout=TIMEOUT))
    # The resolved config is YAML (comment lines are ignored by the parser).
    resolved = yaml.safe_load(result.stdout)
    assert resolved["analysis_mode"] == mode
    assert resolved["analyzer_parameters"]["end_frame"] == N_FRAMES
    summary = [line for line in result.stdout.splitlines() if line.startswith("# data set")]
    assert len(summary) == 1, describe(result)
    line = summary[0]
    assert layout in line, line
    assert data.name in line, line
    assert f"{len(PHI)} angle(s)" in line, line
    angles = [float(a) for a in re.search(r"angle\(s\) \[([^\]]*)\]", line).group(1).split(",")]
    assert angles == pytest.approx(PHI)
    assert f"frames 1..{N_FRAMES} ({N_FRAMES})" in line, line
    assert f"{len(PHI) * N_FRAMES * (N_FRAMES - 1) // 2} points" in line, line


def test_validate_reads_dt_from_simulated_file(simulated, tmp_path):
    """``dt: auto`` takes the frame period that simulate stored, and says so."""
    config, data, _ = simulated["static", "aps-u"]
    document = yaml.safe_load(config.read_text())
    document["analyzer_parameters"]["dt"] = "auto"
    auto = tmp_path / "auto_dt.yaml"
    auto.write_text(yaml.safe_dump(document, sort_keys=False))
    result = check(run_cli("validate", str(auto), timeout=TIMEOUT))
    assert "dt = 0.1 s (file)" in result.stdout, describe(result)


def test_simulate_float32_and_window(simulated, tmp_path):
    """``--dtype float32`` and a frame window starting after frame 1 still validate."""
    config, _, _ = simulated["static", "aps-u"]
    document = yaml.safe_load(config.read_text())
    document["analyzer_parameters"]["start_frame"] = 5
    data = tmp_path / "window32.h5"
    document["experimental_data"]["file_path"] = str(data)
    windowed = tmp_path / "window32.yaml"
    windowed.write_text(yaml.safe_dump(document, sort_keys=False))
    check(run_cli("simulate", str(windowed), "--output", str(data), "--dtype", "float32", "--phi", "10", timeout=TIMEOUT))
    with h5py.File(data, "r") as h5:
        assert h5["xpcs/twotime/correlation_map/c2_00001"].dtype == np.float32
    result = check(run_cli("validate", str(windowed), timeout=TIMEOUT))
    assert f"1 angle(s) [10.0] deg; frames 5..{N_FRAMES} ({N_FRAMES - 4})" in result.stdout, describe(result)


# -- init-config ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_init_config_writes_a_config_that_validates(tmp_path, mode):
    target = tmp_path / f"{mode}.yaml"
    result = check(run_cli("init-config", "--mode", mode, "--output", str(target), timeout=TIMEOUT))
    assert target.is_file()
    assert str(target.name) in result.stdout
    document = yaml.safe_load(target.read_text())
    assert document["analysis_mode"] == mode
    assert document["initial_parameters"]["parameter_names"] == PHYSICAL_NAMES[mode]
    validated = check(run_cli("validate", "--no-data", str(target), timeout=TIMEOUT))
    resolved = yaml.safe_load(validated.stdout)
    assert resolved["analysis_mode"] == mode


@pytest.mark.parametrize("mode", MODES)
def test_init_config_to_stdout(tmp_path, mode):
    result = check(run_cli("init-config", "--mode", mode, timeout=TIMEOUT, cwd=tmp_path))
    assert yaml.safe_load(result.stdout)["analysis_mode"] == mode
    assert list(tmp_path.iterdir()) == []


def test_init_config_refuses_to_overwrite(tmp_path):
    target = tmp_path / "existing.yaml"
    target.write_text("# mine\n")
    result = check(run_cli("init-config", "--mode", "static", "--output", str(target), timeout=TIMEOUT), code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(result)
    assert "existing.yaml" in lines[0] and "--force" in lines[0]
    assert target.read_text() == "# mine\n"
    check(run_cli("init-config", "--mode", "static", "--output", str(target), "--force", timeout=TIMEOUT))
    assert yaml.safe_load(target.read_text())["analysis_mode"] == "static"


def test_init_config_needs_a_known_mode(tmp_path):
    result = check(run_cli("init-config", "--mode", "turbulent", timeout=TIMEOUT, cwd=tmp_path), code=2)
    assert "--mode" in result.stderr


# -- help -------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command():
    result = check(run_cli("--help", timeout=TIMEOUT))
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command):
    result = check(run_cli(command, "--help", timeout=TIMEOUT))
    assert result.stdout.startswith(f"usage: homodyne-mpi {command}"), describe(result)


def test_version():
    result = check(run_cli("--version", timeout=TIMEOUT))
    assert result.stdout.startswith("homodyne-mpi ")


def test_no_command_is_a_usage_error():
    check(run_cli(timeout=TIMEOUT), code=2)


# -- run end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """``run`` (1 rank, NLSQ) on 2 angles x 30 frames of exact static data."""
    folder = tmp_path_factory.mktemp("cli_run")
    data = folder / "tiny_static.h5"
    config = small_config(folder, "static", data)
    document = yaml.safe_load(config.read_text())
    document["optimization"]["method"] = "nlsq"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    check(run_cli("simulate", str(config), "--output", str(data), "--phi", "0,90", timeout=TIMEOUT))
    output_dir = folder / "results"
    result = run_cli("run", str(config), "--output-dir", str(output_dir), timeout=300, cwd=folder)
    return result, output_dir / "tiny_static" / "nlsq", json.loads(Path(f"{data}.truth.json").read_text())


def test_run_exits_zero(static_run):
    result, _, _ = static_run
    check(result)
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")], describe(result)


def test_run_writes_result_json(static_run):
    result, nlsq_dir, _ = static_run
    path = nlsq_dir / "result.json"
    assert path.is_file(), describe(result)
    payload = json.loads(path.read_text())
    assert RESULT_KEYS <= set(payload), sorted(RESULT_KEYS - set(payload))
    assert payload["method"] == "nlsq"
    assert payload["analysis_mode"] == "static"
    assert payload["shear_form"] in ("paper", "homodyne-v2")
    assert payload["n_ranks"] == 1
    assert payload["n_points"] == 2 * N_FRAMES * (N_FRAMES - 1) // 2
    assert isinstance(payload["converged"], bool)
    assert isinstance(payload["iterations"], int) and payload["iterations"] >= 1
    assert np.isfinite(payload["chi2"]) and np.isfinite(payload["reduced_chi2"])
    assert isinstance(payload["timing_s"], dict)
    names = list(payload["parameters"])
    assert names == ["contrast[0]", "contrast[1]", "offset[0]", "offset[1]", *PHYSICAL_NAMES["static"]]
    for name, entry in payload["parameters"].items():
        assert PARAMETER_KEYS <= set(entry), (name, entry)
        assert np.isfinite(entry["value"]), (name, entry)


def test_run_recovers_exact_static_truth(static_run):
    """Noise-free data: contrast, offset and D(t) at the truth (D0 and D_offset trade off at alpha=0)."""
    _, nlsq_dir, truth = static_run
    payload = json.loads((nlsq_dir / "result.json").read_text())
    assert payload["converged"] is True
    parameters = {name: entry["value"] for name, entry in payload["parameters"].items()}
    for i in range(2):
        assert parameters[f"contrast[{i}]"] == pytest.approx(0.5, rel=1e-6)
        assert parameters[f"offset[{i}]"] == pytest.approx(1.0, rel=1e-6)
    t = np.arange(1, N_FRAMES) * 0.1
    fitted = parameters["D0"] * t ** parameters["alpha"] + parameters["D_offset"]
    np.testing.assert_allclose(fitted, 1000.0, rtol=1e-4)


def test_run_writes_fit_h5(static_run):
    result, nlsq_dir, _ = static_run
    path = nlsq_dir / "fit.h5"
    assert path.is_file(), describe(result)
    with h5py.File(path, "r") as h5:
        missing = [key for key in FIT_DATASETS if key not in h5]
        assert not missing, missing
        c2_exp, c2_fit, residual = (h5[key][()] for key in ("c2_exp", "c2_fit", "residual"))
        t, phi, covariance = h5["t"][()], h5["phi"][()], h5["covariance"][()]
    assert c2_exp.shape == c2_fit.shape == residual.shape == (2, N_FRAMES, N_FRAMES)
    np.testing.assert_allclose(t, np.arange(N_FRAMES) * 0.1, rtol=1e-12)
    np.testing.assert_allclose(phi, [0.0, 90.0])
    n_parameters = 2 * 2 + 3
    assert covariance.shape == (n_parameters, n_parameters)
    assert np.all(np.isfinite(covariance))
    np.testing.assert_allclose(covariance, covariance.T, rtol=0, atol=1e-5 * np.abs(covariance).max())
    upper = np.triu_indices(N_FRAMES, 1)
    np.testing.assert_allclose(c2_fit[:, upper[0], upper[1]], c2_exp[:, upper[0], upper[1]], atol=1e-6)
