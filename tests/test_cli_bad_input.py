"""Bad input through the real command line: one clear ``error:`` line, exit code 2.

Every case runs ``python -m homodyne_mpi`` as a subprocess (``validate`` and ``run``, a
few of them under ``mpiexec -n 2`` too) and checks the contract of ``docs/architecture.md`` ("Data in") and
the exit codes: code 2, no traceback, and exactly one line on stderr that is not a log
line; it starts with ``error:`` and names the file and the key. Under several ranks the
line must still appear once and every rank must end together (the timeout catches a
hang). A failed ``run`` must leave no partial result of the bad data set.

The data are tiny files written by ``homodyne-mpi simulate`` from an
``init-config --mode static`` template (2 angles x 30 frames), then damaged with h5py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import run_cli

LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2} \[rank \d+/\d+\] [A-Z]+ [\w.]+: ")
"""A log line: ``HH:MM:SS [rank r/n] LEVEL name: message``."""

MPI_TIMEOUT = 120
SERIAL_TIMEOUT = 60

APS_U_MATRIX = "xpcs/twotime/correlation_map/c2_{:05d}"
LEGACY_MATRIX = "exchange/C2T_all/c2_{:05d}"


# -- helpers ----------------------------------------------------------------------------


def message_lines(stderr: str) -> list[str]:
    """The stderr lines that are not log lines (and not blank)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def describe(result) -> str:
    return (
        f"command: {' '.join(map(str, result.args))}\nexit code: {result.returncode}\n"
        f"--- stdout (tail) ---\n{result.stdout[-1500:]}\n--- stderr (tail) ---\n{result.stderr[-4000:]}"
    )


def assert_bad_input(result, *needles: str) -> str:
    """Exit code 2, no traceback, one ``error:`` line holding every needle; returns it."""
    context = describe(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, context
    assert result.returncode == 2, context
    lines = message_lines(result.stderr)
    if not lines:
        on_stdout = [line for line in result.stdout.splitlines() if line.startswith("error:")]
        assert not on_stdout, f"the error line went to stdout, not stderr: {on_stdout}\n{context}"
    assert len(lines) == 1, f"expected exactly one non-log line on stderr, got {len(lines)}\n{context}"
    line = lines[0]
    assert line.startswith("error:"), context
    for needle in needles:
        assert needle in line, f"{needle!r} not in the error line\n{context}"
    return line


def assert_no_result(output_dir: Path) -> None:
    """No fitted result was written anywhere under ``output_dir`` (no partial result)."""
    if output_dir.exists():
        leftovers = [p for p in output_dir.rglob("*") if p.name in ("result.json", "fit.h5", "posterior.h5")]
        assert not leftovers, f"partial results written: {leftovers}"


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def set_key(document: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node[part]
    node[last] = value


def rename_key(document: dict, dotted: str, new_name: str) -> None:
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node[part]
    node[new_name] = node.pop(last)


def copy_and_edit(source: Path, target: Path, edit) -> Path:
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as h5:
        edit(h5)
    return target


# -- shared files -----------------------------------------------------------------------


class Workspace:
    """A folder with a base config (as a dict), a good APS-U and a good legacy file."""

    def __init__(self, root: Path, base: dict, good: Path, legacy: Path):
        self.root = root
        self.base = base
        self.good = good
        self.legacy = legacy
        self.files: dict[str, Path] = {}

    def config(self, name: str, *, data: Path | None = None, edits: dict | None = None, renames: dict | None = None) -> Path:
        """Write ``<name>.yaml``: the base config on ``data`` with dotted-key edits."""
        document = yaml.safe_load(yaml.safe_dump(self.base))
        document["experimental_data"]["file_path"] = str(data or self.good)
        for dotted, value in (edits or {}).items():
            set_key(document, dotted, value)
        for dotted, new_name in (renames or {}).items():
            rename_key(document, dotted, new_name)
        return write_yaml(self.root / f"{name}.yaml", document)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("cli_bad_input")
    template = root / "template.yaml"
    result = run_cli("init-config", "--mode", "static", "--output", str(template), timeout=SERIAL_TIMEOUT)
    assert result.returncode == 0, describe(result)
    base = yaml.safe_load(template.read_text())
    set_key(base, "analyzer_parameters.dt", 0.1)
    set_key(base, "analyzer_parameters.start_frame", 1)
    set_key(base, "analyzer_parameters.end_frame", 30)
    set_key(base, "phi_filtering.enabled", False)
    set_key(base, "output.plots", False)
    set_key(base, "compute.compilation_cache_dir", None)
    set_key(base, "optimization.nlsq.max_iterations", 20)

    good, legacy = root / "good.h5", root / "legacy.h5"
    workspace = Workspace(root, base, good, legacy)
    sim_config = workspace.config("simulate_base")
    for path, layout in ((good, "aps-u"), (legacy, "aps-legacy")):
        result = run_cli(
            "simulate", str(sim_config), "--output", str(path), "--layout", layout, "--phi", "0,90", timeout=SERIAL_TIMEOUT
        )
        assert result.returncode == 0, describe(result)

    files = workspace.files
    files["missing"] = root / "does_not_exist.h5"
    text = root / "not_hdf5.h5"
    text.write_text("this is not an HDF5 file\n")
    files["not_hdf5"] = text
    unknown = root / "unknown_layout.h5"
    with h5py.File(unknown, "w") as h5:
        h5.create_dataset("entry/data/frames", data=np.zeros((4, 4)))
    files["unknown_layout"] = unknown

    def drop(key):
        return lambda h5: h5.__delitem__(key)

    def replace(key, array):
        def edit(h5):
            del h5[key]
            h5.create_dataset(key, data=array)

        return edit

    def poke(key, value, row=3, col=7):
        def edit(h5):
            matrix = h5[key][()]
            matrix[row, col] = value
            h5[key][...] = matrix

        return edit

    files["missing_matrix"] = copy_and_edit(good, root / "missing_matrix.h5", drop(APS_U_MATRIX.format(2)))
    files["missing_q_list"] = copy_and_edit(good, root / "missing_q_list.h5", drop("xpcs/qmap/dynamic_v_list_dim0"))
    files["legacy_missing_phi"] = copy_and_edit(legacy, root / "legacy_missing_phi.h5", drop("xpcs/dphilist"))
    files["shape_mismatch"] = copy_and_edit(
        good, root / "shape_mismatch.h5", replace(APS_U_MATRIX.format(2), np.triu(np.ones((20, 20))))
    )
    files["not_square"] = copy_and_edit(good, root / "not_square.h5", replace(APS_U_MATRIX.format(2), np.ones((30, 20))))
    files["nan"] = copy_and_edit(good, root / "nan.h5", poke(APS_U_MATRIX.format(2), np.nan))
    files["inf"] = copy_and_edit(good, root / "inf.h5", poke(APS_U_MATRIX.format(1), np.inf, 0, 29))
    files["legacy_nan"] = copy_and_edit(legacy, root / "legacy_nan.h5", poke(LEGACY_MATRIX.format(1), np.nan, 10, 12))
    files["legacy_inf"] = copy_and_edit(legacy, root / "legacy_inf.h5", poke(LEGACY_MATRIX.format(2), -np.inf, 1, 2))
    return workspace


# -- the cases --------------------------------------------------------------------------

# name -> function(ws) -> (config path, needles in the error line). Needles name the file
# (or config) and the key; the case name says what is wrong.


def _missing_config(ws):
    path = ws.root / "no_such_config.yaml"
    return path, ["no_such_config.yaml", "not found"]


def _malformed_yaml(ws):
    path = ws.root / "malformed.yaml"
    path.write_text("analysis_mode: static\nanalyzer_parameters:\n  dt: 0.1\n    end_frame: [30,\n")
    return path, ["malformed.yaml", "line"]


def _unknown_key(ws):
    return ws.config("unknown_key", renames={"analyzer_parameters.dt": "dtt"}), [
        "unknown_key.yaml",
        "dtt",
        "did you mean",
        "'dt'",
    ]


def _misspelt_nested_key(ws):
    return (
        ws.config("misspelt_key", renames={"optimization.nlsq.max_iterations": "max_iteration"}),
        ["misspelt_key.yaml", "max_iteration", "did you mean", "max_iterations"],
    )


def _wrong_type(ws):
    return ws.config("wrong_type", edits={"optimization.nlsq.max_iterations": "many"}), ["wrong_type.yaml", "max_iterations"]


def _wrong_type_frame(ws):
    return ws.config("wrong_type_frame", edits={"analyzer_parameters.end_frame": "thirty"}), [
        "wrong_type_frame.yaml",
        "end_frame",
    ]


def _out_of_bounds(ws):
    return ws.config("out_of_bounds", edits={"analyzer_parameters.scattering.wavevector_q": -0.01}), [
        "out_of_bounds.yaml",
        "wavevector_q",
    ]


def _out_of_bounds_tolerance(ws):
    return ws.config("bad_xtol", edits={"optimization.nlsq.xtol": -1.0}), ["bad_xtol.yaml", "xtol"]


def _bad_choice(ws):
    return (
        ws.config("bad_chain_method", edits={"optimization.cmc.per_shard_mcmc.chain_method": "vectorised"}),
        ["bad_chain_method.yaml", "chain_method"],
    )


def _data_case(file_key, needles):
    def case(ws):
        path = ws.files[file_key]
        return ws.config(f"data_{file_key}", data=path), [path.name, *needles]

    return case


def _no_angle_left(ws):
    edits = {"phi_filtering.enabled": True, "phi_filtering.target_ranges": [{"min_angle": 30.0, "max_angle": 60.0}]}
    return ws.config("no_angle_left", edits=edits), ["good.h5", "no angle left", "phi_filtering"]


def _frames_out_of_range(ws):
    edits = {"analyzer_parameters.start_frame": 10, "analyzer_parameters.end_frame": 50}
    return ws.config("frames_out_of_range", edits=edits), ["good.h5", "end_frame", "30"]


CASES = {
    "missing_config": _missing_config,
    "malformed_yaml": _malformed_yaml,
    "unknown_key": _unknown_key,
    "misspelt_nested_key": _misspelt_nested_key,
    "wrong_type": _wrong_type,
    "wrong_type_frame": _wrong_type_frame,
    "out_of_bounds": _out_of_bounds,
    "out_of_bounds_tolerance": _out_of_bounds_tolerance,
    "bad_choice": _bad_choice,
    "missing_data_file": _data_case("missing", ["file_path"]),
    "not_hdf5": _data_case("not_hdf5", ["HDF5"]),
    "unknown_layout": _data_case("unknown_layout", ["layout"]),
    "missing_matrix": _data_case("missing_matrix", [APS_U_MATRIX.format(2)]),
    "missing_q_list": _data_case("missing_q_list", ["xpcs/qmap/dynamic_v_list_dim0"]),
    "legacy_missing_phi": _data_case("legacy_missing_phi", ["xpcs/dphilist"]),
    "shape_mismatch": _data_case("shape_mismatch", [APS_U_MATRIX.format(2), "shape"]),
    "not_square": _data_case("not_square", [APS_U_MATRIX.format(2), "shape"]),
    "nan_in_c2": _data_case("nan", [APS_U_MATRIX.format(2), "NaN"]),
    "inf_in_c2": _data_case("inf", [APS_U_MATRIX.format(1), "inf"]),
    "legacy_nan_in_c2": _data_case("legacy_nan", [LEGACY_MATRIX.format(1), "NaN"]),
    "legacy_inf_in_c2": _data_case("legacy_inf", [LEGACY_MATRIX.format(2), "inf"]),
    "no_angle_left": _no_angle_left,
    "frames_out_of_range": _frames_out_of_range,
}

CONFIG_CASES = {
    "missing_config",
    "malformed_yaml",
    "unknown_key",
    "misspelt_nested_key",
    "wrong_type",
    "wrong_type_frame",
    "out_of_bounds",
    "out_of_bounds_tolerance",
    "bad_choice",
}


# -- sanity: the shared files are good ---------------------------------------------------


@pytest.mark.parametrize("which", ["good", "legacy"])
def test_base_config_and_files_validate(ws, which):
    """The untouched files load, so every failure below is due to the one defect."""
    config = ws.config(f"base_{which}", data=getattr(ws, which))
    result = run_cli("validate", str(config), timeout=SERIAL_TIMEOUT)
    assert result.returncode == 0, describe(result)
    assert "2 angle(s)" in result.stdout and "(30)" in result.stdout, describe(result)


# -- validate ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_validate_bad_input(ws, case):
    config, needles = CASES[case](ws)
    result = run_cli("validate", str(config), timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, *needles)


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_validate_no_data_bad_config(ws, case):
    """``--no-data`` still rejects a bad config with the same one line."""
    config, needles = CASES[case](ws)
    result = run_cli("validate", "--no-data", str(config), timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, *needles)


# -- run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_run_bad_input(ws, case, tmp_path):
    config, needles = CASES[case](ws)
    output_dir = tmp_path / "results"
    result = run_cli("run", str(config), "--output-dir", str(output_dir), timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, *needles)
    assert_no_result(output_dir)


@pytest.mark.parametrize(
    "case", ["malformed_yaml", "unknown_key", "missing_data_file", "nan_in_c2", "frames_out_of_range", "no_angle_left"]
)
def test_run_bad_input_two_ranks(ws, case, tmp_path):
    """Under ``mpiexec -n 2`` all ranks exit 2 together, and the line is printed once."""
    config, needles = CASES[case](ws)
    output_dir = tmp_path / "results"
    result = run_cli("run", str(config), "--output-dir", str(output_dir), ranks=2, timeout=MPI_TIMEOUT)
    assert_bad_input(result, *needles)
    assert_no_result(output_dir)


def test_run_batch_keeps_finished_dataset(ws, tmp_path):
    """A bad data set in a batch: exit 2, one line, and the good data set's result stays."""
    document = yaml.safe_load(yaml.safe_dump(ws.base))
    document["experimental_data"]["file_path"] = None
    document["experimental_data"]["datasets"] = [
        {"file_path": str(ws.good), "name": "good_first"},
        {"file_path": str(ws.files["nan"]), "name": "bad_second"},
    ]
    config = write_yaml(tmp_path / "batch.yaml", document)
    output_dir = tmp_path / "results"
    result = run_cli("run", str(config), "--output-dir", str(output_dir), ranks=2, timeout=MPI_TIMEOUT)
    assert_bad_input(result, "nan.h5", APS_U_MATRIX.format(2))
    assert (output_dir / "good_first" / "nlsq" / "result.json").is_file(), describe(result)
    assert (output_dir / "good_first" / "nlsq" / "fit.h5").is_file(), describe(result)
    assert not (output_dir / "bad_second" / "nlsq" / "result.json").exists()


def test_run_bad_method_argument_is_usage_error(ws, tmp_path):
    config = ws.config("method_arg")
    result = run_cli("run", str(config), "--method", "mcmc", timeout=SERIAL_TIMEOUT, cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    assert "--method" in result.stderr


# -- simulate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--phi", "abc"], ["--phi", "abc"]),
        (["--phi", ","], ["--phi"]),
        (["--phi", "nan"], ["phi"]),
        (["--noise", "-1"], ["noise"]),
        (["--noise", "nan"], ["noise"]),
        (["--seed", "-1"], ["seed"]),
    ],
    ids=["phi_not_numbers", "phi_empty", "phi_nan", "noise_negative", "noise_nan", "seed_negative"],
)
def test_simulate_bad_arguments(ws, tmp_path, extra, needles):
    config = ws.config("simulate_args")
    target = tmp_path / "sim.h5"
    result = run_cli("simulate", str(config), "--output", str(target), *extra, timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, *needles)
    assert not target.exists()


def test_simulate_missing_config(ws, tmp_path):
    result = run_cli("simulate", str(ws.root / "nowhere.yaml"), "--output", str(tmp_path / "x.h5"), timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, "nowhere.yaml")


@pytest.mark.parametrize(
    "edits, needles",
    [
        ({"analyzer_parameters.dt": "auto"}, ["dt"]),
        ({"analyzer_parameters.end_frame": None}, ["end_frame"]),
        ({"initial_parameters.per_angle_scaling.contrast": [0.5, 0.5, 0.5]}, ["contrast"]),
        ({"analyzer_parameters.scattering.wavevector_q": 0}, ["wavevector_q"]),
    ],
    ids=["dt_auto", "no_end_frame", "contrast_count", "q_zero"],
)
def test_simulate_unusable_config(ws, tmp_path, edits, needles):
    config = ws.config("simulate_unusable", edits=edits)
    result = run_cli("simulate", str(config), "--output", str(tmp_path / "x.h5"), "--phi", "0,90", timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, *needles)


def test_simulate_unwritable_output(ws, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = ws.config("simulate_unwritable")
    result = run_cli("simulate", str(config), "--output", str(blocker / "x.h5"), "--phi", "0", timeout=SERIAL_TIMEOUT)
    assert_bad_input(result, "x.h5", "--output")


def test_simulate_noise_model_choice_never_crashes(ws, tmp_path):
    """Every ``--noise-model`` the parser offers either works or is a clean exit 2."""
    config = ws.config("simulate_noise_model")
    result = run_cli(
        "simulate",
        str(config),
        "--output",
        str(tmp_path / "x.h5"),
        "--phi",
        "0",
        "--noise",
        "0.01",
        "--noise-model",
        "speckle",
        timeout=SERIAL_TIMEOUT,
    )
    if result.returncode == 0:
        assert (tmp_path / "x.h5").is_file()
    else:
        assert_bad_input(result, "noise_model")


@pytest.mark.parametrize("extra", [["--layout", "nexus"], ["--dtype", "float16"], []], ids=["layout", "dtype", "no_output"])
def test_simulate_usage_errors(ws, tmp_path, extra):
    config = ws.config("simulate_usage")
    output = [] if not extra else ["--output", str(tmp_path / "x.h5")]
    result = run_cli("simulate", str(config), *output, *extra, timeout=SERIAL_TIMEOUT)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
