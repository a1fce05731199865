"""``nlsq/fit.h5`` matrices per ``output.fit_matrices``: full, downsampled (auto) and none.

A small simulated static data set (2 angles x 23 frames) and a fit result at the starting
parameters are written through ``fit_file.write_fit_file`` (loaded and streamed sources,
large and tiny row blocks) and compared with matrices computed independently on the full
grid (the loaded ``c2`` and ``model.c2_grid``); the figures, ``homodyne-mpi plot`` and the
report are run on downsampled and matrix-less files; one real ``homodyne-mpi run`` checks
the pipeline's wiring; bad settings are one-line config errors (exit code 2).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import run_cli, template_config, write_config
from test_batch import simulate_static

from homodyne_mpi.config import HomodyneConfig
from homodyne_mpi.data.loader import load_config_dataset
from homodyne_mpi.data.stream import PointSource
from homodyne_mpi.errors import ConfigError
from homodyne_mpi.fit_file import ROW_BLOCK_VALUES, write_fit_file, write_streamed_fit_file
from homodyne_mpi.fit_matrices import MATRICES, matrix_bytes, matrix_plan
from homodyne_mpi.model import c2_grid
from homodyne_mpi.nlsq import NLSQResult
from homodyne_mpi.nlsq.problem import build_problem
from homodyne_mpi.nlsq.results import result_document
from homodyne_mpi.report import format_report

N_FRAMES = 23
MAX_FRAMES = 6
STEP = math.ceil(N_FRAMES / MAX_FRAMES)  # 4
KEPT = np.arange(0, N_FRAMES, STEP)  # 0, 4, ..., 20: 6 frames
TINY_BLOCK = 13  # two rows of 6 per block: three blocks per angle
TIMEOUT = 300


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The data set, its problem, a result at the starting parameters and the full reference matrices."""
    folder = tmp_path_factory.mktemp("fit_matrices")
    data_path = simulate_static(folder / "data.h5", 5, n_frames=N_FRAMES)
    changes = {"analyzer_parameters.dt": 0.1, "experimental_data.file_path": str(data_path)}
    cfg = HomodyneConfig.from_dict(template_config("static", **changes))
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    covariance = np.diag(np.where(problem.free, 1e-6, 0.0))
    result = NLSQResult(
        names=list(problem.names),
        theta=problem.theta0.copy(),
        covariance=covariance,
        converged=True,
        reason="test",
        iterations=1,
        chi2=float(data.n_points),
        n_points=data.n_points,
        n_free=int(problem.free.sum()),
        n_ranks=1,
        history=[],
    )
    contrast, offset, physical = problem.layout.split(jnp.asarray(result.theta))
    c2_fit = np.asarray(c2_grid(physical, contrast, offset, jnp.asarray(problem.phi), problem.spec))
    reference = {"c2_exp": data.c2, "c2_fit": c2_fit, "residual": data.c2 - c2_fit}
    return SimpleNamespace(folder=folder, cfg=cfg, data=data, problem=problem, result=result, reference=reference)


def write(case, path: Path, setting: str, max_frames: int = MAX_FRAMES, source=None, **options) -> Path:
    """``fit.h5`` of ``case`` at ``path`` with ``output.fit_matrices: setting``."""
    plan = matrix_plan(setting, max_frames, N_FRAMES)
    write_fit_file(path, case.result, case.problem, case.data if source is None else source, plan, **options)
    return path


def read(path: Path) -> tuple[dict, dict]:
    """Every dataset and the root attributes of an HDF5 file."""
    arrays: dict = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return arrays, dict(handle.attrs)


def at(matrices: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``matrices[:, frames][:, :, frames]``: the entries on the kept frames."""
    return matrices[:, frames][:, :, frames]


# -- the plan ------------------------------------------------------------------------------


def test_matrix_plan_of_each_setting():
    assert matrix_plan("auto", 1000, 1000).mode == "full"
    plan = matrix_plan("auto", 1000, 1001)
    assert (plan.mode, plan.step, plan.side) == ("downsampled", 2, 501)
    assert np.array_equal(plan.frames, np.arange(0, 1001, 2))
    plan = matrix_plan("auto", 1000, 10_000)
    assert (plan.mode, plan.step, plan.side, int(plan.frames[-1])) == ("downsampled", 10, 1000, 9990)
    full = matrix_plan("full", 10, 10_000)
    assert (full.mode, full.step, full.side) == ("full", 1, 10_000)
    none = matrix_plan("none", 1000, 50)
    assert (none.mode, none.step, none.side, none.attributes()) == (
        "none",
        0,
        0,
        {"fit_matrices": "none", "matrix_frame_step": 0},
    )
    with pytest.raises(ValueError, match="fit_matrices must be one of"):
        matrix_plan("some", 1000, 50)
    for n_frames in range(2, 400, 7):
        for max_frames in (2, 3, 10, 99):
            plan = matrix_plan("auto", max_frames, n_frames)
            assert plan.side <= max_frames or plan.mode == "full"
            assert plan.frames[0] == 0 and plan.frames[-1] < n_frames <= plan.frames[-1] + plan.step
            assert np.all(np.diff(plan.frames) == plan.step)


def test_matrix_bytes_at_1e8_points():
    """The numbers of docs/performance.md: 6 angles x 5774 frames (99,999,906 points, bench_scale's 1e8)."""
    n_frames = 5774
    assert 6 * n_frames * (n_frames - 1) // 2 == 99_999_906
    assert matrix_bytes(6, matrix_plan("full", 1000, n_frames)) == 3 * 8 * 6 * n_frames**2 == 4_800_826_944
    auto = matrix_plan("auto", 1000, n_frames)
    assert (auto.step, auto.side) == (6, 963)
    assert matrix_bytes(6, auto) == 133_541_136
    assert matrix_bytes(6, matrix_plan("none", 1000, n_frames)) == 0


# -- the written matrices ----------------------------------------------------------------------


def test_full_and_small_auto_hold_the_reference_matrices(case, tmp_path):
    full_arrays, full_attrs = read(write(case, tmp_path / "full.h5", "full"))
    auto_arrays, auto_attrs = read(write(case, tmp_path / "auto.h5", "auto", max_frames=N_FRAMES))
    for arrays, attrs in ((full_arrays, full_attrs), (auto_arrays, auto_attrs)):
        assert (attrs["fit_matrices"], attrs["matrix_frame_step"]) == ("full", 1)
        assert np.array_equal(arrays["matrix_frames"], np.arange(N_FRAMES))
        assert np.array_equal(arrays["c2_exp"], case.reference["c2_exp"])
        # the model by row blocks (c2_points) against the whole grid (c2_grid)
        np.testing.assert_allclose(arrays["c2_fit"], case.reference["c2_fit"], rtol=1e-13, atol=0)
        assert np.array_equal(arrays["residual"], arrays["c2_exp"] - arrays["c2_fit"])
    assert full_arrays.keys() == auto_arrays.keys()
    for name in full_arrays:
        assert np.array_equal(full_arrays[name], auto_arrays[name]), name


@pytest.mark.parametrize("source", ["loaded", "streamed"])
@pytest.mark.parametrize("block_values", [ROW_BLOCK_VALUES, TINY_BLOCK])
def test_downsampled_matrices_are_the_full_ones_at_the_kept_frames(case, tmp_path, source, block_values):
    full, _ = read(write(case, tmp_path / "full.h5", "full"))
    if source == "loaded":
        path = write(case, tmp_path / "auto.h5", "auto", block_values=block_values)
    else:
        with PointSource.from_config(case.cfg) as points:
            path = write(case, tmp_path / "auto.h5", "auto", source=points, block_values=block_values)
    arrays, attrs = read(path)
    assert (attrs["fit_matrices"], attrs["matrix_frame_step"]) == ("downsampled", STEP)
    assert np.array_equal(arrays["matrix_frames"], KEPT)
    for name in MATRICES:
        assert arrays[name].shape == (2, KEPT.size, KEPT.size)
    assert np.array_equal(arrays["c2_exp"], at(full["c2_exp"], KEPT))
    assert np.array_equal(arrays["c2_exp"], at(case.reference["c2_exp"], KEPT))
    np.testing.assert_allclose(arrays["c2_fit"], at(full["c2_fit"], KEPT), rtol=1e-14, atol=0)
    np.testing.assert_allclose(arrays["c2_fit"], at(case.reference["c2_fit"], KEPT), rtol=1e-13, atol=0)
    assert np.array_equal(arrays["residual"], arrays["c2_exp"] - arrays["c2_fit"])
    assert not np.allclose(arrays["residual"], 0.0)  # a real comparison: start values, not the truth
    assert np.array_equal(arrays["t"], full["t"]) and arrays["t"].shape == (N_FRAMES,)


def test_none_keeps_every_other_dataset(case, tmp_path):
    full, _ = read(write(case, tmp_path / "full.h5", "full"))
    arrays, attrs = read(write(case, tmp_path / "none.h5", "none"))
    assert (attrs["fit_matrices"], attrs["matrix_frame_step"]) == ("none", 0)
    assert not set(MATRICES) & set(arrays)
    assert arrays["matrix_frames"].shape == (0,)
    assert set(arrays) == set(full) - set(MATRICES)
    for name in set(arrays) - {"matrix_frames"}:
        assert np.array_equal(arrays[name], full[name]), name
    assert (tmp_path / "none.h5").stat().st_size < (tmp_path / "full.h5").stat().st_size


def test_rows_are_read_in_bounded_blocks(case, tmp_path):
    calls = []

    class Recording:
        """The loaded data set, recording the shape of every row block read."""

        n_angles, n_frames, t, phi = case.data.n_angles, case.data.n_frames, case.data.t, case.data.phi

        def full_rows(self, angle, row_start, row_stop, step=1):
            block = case.data.full_rows(angle, row_start, row_stop, step)
            calls.append((angle, row_start, step, block.shape))
            return block

    write(case, tmp_path / "auto.h5", "auto", source=Recording(), block_values=TINY_BLOCK)
    # 13 values per block: 2 kept rows of 6; 3 blocks per angle, rows 0-1, 2-3, 4-5
    expected = [(a, int(KEPT[b]), STEP, (2, KEPT.size)) for a in range(2) for b in (0, 2, 4)]
    assert calls == expected


def test_streamed_writer_equals_the_loaded_one(case, tmp_path):
    loaded, loaded_attrs = read(write(case, tmp_path / "loaded.h5", "auto"))
    plan = matrix_plan("auto", MAX_FRAMES, N_FRAMES)
    reopen = functools.partial(PointSource.from_config, case.cfg)
    write_streamed_fit_file(tmp_path / "streamed.h5", case.result, case.problem, reopen, plan)
    streamed, streamed_attrs = read(tmp_path / "streamed.h5")
    assert streamed_attrs == loaded_attrs and streamed.keys() == loaded.keys()
    for name in loaded:
        assert np.array_equal(streamed[name], loaded[name]), name


def test_figure_arrays_build_the_written_angles(case, tmp_path):
    handed = {}
    for setting in ("auto", "none"):
        path = write(case, tmp_path / f"{setting}.h5", setting, figures=functools.partial(handed.__setitem__, setting))
        written, _ = read(path)
        arrays = handed[setting]
        assert np.array_equal(arrays["matrix_frames"], written["matrix_frames"])
        if setting == "none":
            assert "c2_exp" not in arrays and "c2_fit" not in arrays
            continue
        assert np.shape(arrays["c2_exp"]) == np.shape(arrays["c2_fit"]) == (2, KEPT.size, KEPT.size)
        for k in range(2):
            assert np.array_equal(arrays["c2_exp"][k], written["c2_exp"][k])
            assert np.array_equal(arrays["c2_fit"][k], written["c2_fit"][k])


# -- readers: figures, redraw, report ---------------------------------------------------------


def results_folder(case, root: Path, setting: str) -> Path:
    """``root/sim/nlsq/{result.json, fit.h5}`` as a run writes them, with ``setting``."""
    nlsq = root / "sim" / "nlsq"
    nlsq.mkdir(parents=True)
    document = result_document(case.result, case.problem, case.cfg, case.data, dataset="sim", timing_s={})
    (nlsq / "result.json").write_text(json.dumps(document))
    write(case, nlsq / "fit.h5", setting)
    return root


def c2_names(case) -> list[str]:
    from homodyne_mpi.plots.nlsq_figures import c2_plot_name

    return [c2_plot_name(k, phi) for k, phi in enumerate(case.data.phi)]


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
        rgb = np.asarray(image.convert("RGB"))
    assert np.any(rgb < 245, axis=2).mean() > 0.05, f"{path.name} is blank"


def test_redraw_of_a_downsampled_file(case, tmp_path):
    pytest.importorskip("matplotlib")
    from homodyne_mpi.plots.nlsq_figures import figure_info
    from homodyne_mpi.plots.redraw import redraw_results

    root = results_folder(case, tmp_path / "out", "auto")
    nlsq = root / "sim" / "nlsq"
    with h5py.File(nlsq / "fit.h5", "r") as handle:
        info = figure_info(json.loads((nlsq / "result.json").read_text()), handle)
    np.testing.assert_allclose(info.t, KEPT * 0.1, rtol=1e-15)
    assert info.frame_step == STEP
    assert redraw_results(root) == 0
    drawn = sorted(p.name for p in (nlsq / "plots").glob("*.png"))
    assert drawn == sorted([*c2_names(case), "transport.png"])
    for name in drawn:
        assert_png(nlsq / "plots" / name)


def test_redraw_of_a_file_without_matrices(case, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from homodyne_mpi.plots.redraw import redraw_results

    root = results_folder(case, tmp_path / "out", "none")
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.plots"):
        assert redraw_results(root) == 0
    plots = root / "sim" / "nlsq" / "plots"
    assert sorted(p.name for p in plots.glob("*.png")) == ["transport.png"]
    assert_png(plots / "transport.png")
    assert "fit.h5 holds no c2 matrices (output.fit_matrices: none); skipping the 2 c2 figure(s)" in caplog.text


def test_redraw_of_a_file_written_before_the_plan_was_recorded(case, tmp_path):
    pytest.importorskip("matplotlib")
    from homodyne_mpi.plots.redraw import redraw_results

    root = results_folder(case, tmp_path / "out", "full")
    with h5py.File(root / "sim" / "nlsq" / "fit.h5", "a") as handle:
        del handle["matrix_frames"]
        for name in ("fit_matrices", "matrix_frame_step"):
            del handle.attrs[name]
    assert redraw_results(root) == 0
    assert len(list((root / "sim" / "nlsq" / "plots").glob("c2_phi_*.png"))) == 2


def test_redraw_refuses_matrix_frames_that_do_not_fit(case, tmp_path):
    from homodyne_mpi.errors import InputError
    from homodyne_mpi.plots.redraw import redraw_results

    pytest.importorskip("matplotlib")
    root = results_folder(case, tmp_path / "out", "auto")
    with h5py.File(root / "sim" / "nlsq" / "fit.h5", "a") as handle:
        del handle["matrix_frames"]
        handle["matrix_frames"] = np.arange(KEPT.size) * 50
    with pytest.raises(InputError, match="'t' has shape"):
        redraw_results(root)


def test_report_names_the_kept_matrices(case, tmp_path):
    for setting, expected in (
        ("auto", f"fit.h5        keeps the c2 matrices on one frame in {STEP} ({KEPT.size} of {N_FRAMES} frames), "),
        ("none", "fit.h5        keeps no c2 matrices, "),
        ("full", f"fit.h5        keeps the c2 matrices on all {N_FRAMES} of {N_FRAMES} frames, "),
    ):
        text = format_report(results_folder(case, tmp_path / setting, setting))
        assert expected in text, text


# -- the config and a real run ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "fit_matrices",
            "ful",
            "'output.fit_matrices' = 'ful' is not allowed -- use one of: auto, full, none (did you mean 'full'?)",
        ),
        ("fit_matrices", True, "'output.fit_matrices'"),
        ("fit_matrix_max_frames", 1, "'output.fit_matrix_max_frames' = 1 is out of range"),
        ("fit_matrix_max_frames", "many", "'output.fit_matrix_max_frames'"),
    ],
)
def test_bad_settings_are_one_line_config_errors(key, value, expected):
    with pytest.raises(ConfigError) as caught:
        HomodyneConfig.from_dict(template_config("static", **{f"output.{key}": value}), source="config.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("config.yaml: ") and expected in message


def test_validate_exits_2_on_a_bad_setting(tmp_path):
    config = write_config(tmp_path / "config.yaml", "static", **{"output.fit_matrices": "downsampled"})
    done = run_cli("validate", str(config), "--no-data", timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "fit_matrices" in line]
    assert len(errors) == 1 and "use one of: auto, full, none" in errors[0], done.stderr[-2000:]


@pytest.mark.timeout(TIMEOUT)
def test_run_writes_a_downsampled_file_and_draws_it(case, tmp_path):
    pytest.importorskip("matplotlib")
    changes = {
        "analyzer_parameters.dt": 0.1,
        "experimental_data.file_path": str(case.folder / "data.h5"),
        "output.plots": True,
        "output.fit_matrix_max_frames": MAX_FRAMES,
    }
    config = write_config(tmp_path / "config.yaml", "static", **changes)
    done = run_cli("run", str(config), "--method", "nlsq", "--output-dir", str(tmp_path / "out"), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"fit.h5 keeps the c2 matrices on one frame in {STEP} ({KEPT.size} of {N_FRAMES} frames)" in done.stderr
    nlsq = tmp_path / "out" / "data" / "nlsq"
    arrays, attrs = read(nlsq / "fit.h5")
    assert (attrs["fit_matrices"], attrs["matrix_frame_step"]) == ("downsampled", STEP)
    assert np.array_equal(arrays["c2_exp"], at(case.reference["c2_exp"], KEPT))
    assert sorted(p.name for p in (nlsq / "plots").glob("*.png")) == sorted([*c2_names(case), "transport.png"])
    for path in (nlsq / "plots").glob("*.png"):
        assert_png(path)
    assert yaml.safe_load(config.read_text())["output"]["fit_matrices"] == "auto"
