"""PNG figures: NLSQ (c2 per angle, J(t)/gamma_dot(t)) and CMC (marginals, pairs, shard health).

- Real NLSQ results of both modes (``homodyne-mpi run`` on tiny simulated data), drawn
  through the pipeline hook :func:`submit_nlsq_figures` on an ``AsyncWriter``; the PNGs are
  opened and checked for size and non-blank content; ``homodyne-mpi plot`` redraws them
  from the saved files pixel for pixel.
- CMC figures of both modes from a small synthetic ``cmc/result.json`` + ``posterior.h5``
  in the format ``homodyne_mpi.cmc`` writes (``docs/architecture.md``, "Results"), the same
  checks, and a tolerant reader (a missing array skips its panel with a warning).
- Downsampling for drawing (block means, diagonal handling) against a plain reference,
  the saved 1-sigma bands of ``fit.h5`` against finite differences of the model's rates,
  file names, bad result folders, and a cluster install without matplotlib.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import run_cli

from homodyne_mpi.errors import HomodyneError, InputError
from homodyne_mpi.io import AsyncWriter

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (a matplotlib dependency)

from homodyne_mpi import plots  # noqa: E402
from homodyne_mpi.plots import backend, c2_figure, cmc_figures, downsample, nlsq_figures, shard_health  # noqa: E402
from homodyne_mpi.plots.redraw import redraw_results  # noqa: E402

TIMEOUT = 180
MODES = ("static", "laminar_flow")
N_FRAMES = 40
PHI = (-30.0, 0.0, 45.5)
TRUTH = {
    "static": [10000.0, -0.5, 5.0],
    "laminar_flow": [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0],
}
PHYSICAL = {
    "static": ["D0", "alpha", "D_offset"],
    "laminar_flow": ["D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"],
}
FIT_KEYS = ("c2_exp", "c2_fit", "t", "phi", "covariance", "parameters/names", "parameters/values", "noise_sigma")


# -- helpers ---------------------------------------------------------------------------------


def describe(result) -> str:
    return (
        f"command: {' '.join(map(str, result.args))}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    )


def check(result, code: int = 0):
    assert "Traceback" not in result.stderr, describe(result)
    assert result.returncode == code, describe(result)
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def assert_drawn(path: Path, min_size: tuple[int, int] = (500, 350), min_colours: int = 50) -> np.ndarray:
    """The PNG exists, is at least ``min_size`` (width, height) and is not blank."""
    assert path.is_file(), f"{path} was not written"
    rgb = pixels(path)
    height, width = rgb.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], f"{path.name}: {width} x {height}"
    not_white = np.any(rgb < 245, axis=2).mean()
    assert not_white > 0.05, f"{path.name}: only {not_white:.1%} of the pixels are drawn"
    colours = np.unique(rgb.reshape(-1, 3)[::7], axis=0).shape[0]
    assert colours >= min_colours, f"{path.name}: only {colours} colours"
    return rgb


def read_fit_arrays(path: Path) -> dict:
    """``fit.h5`` in memory (every dataset, ``bands/...`` included), as the pipeline holds it."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert set(FIT_KEYS) <= set(arrays)
    return arrays


def make_config(folder: Path, mode: str) -> Path:
    template = folder / f"template_{mode}.yaml"
    check(run_cli("init-config", "--mode", mode, "--output", str(template), timeout=TIMEOUT))
    document = yaml.safe_load(template.read_text())
    analyzer = document["analyzer_parameters"]
    analyzer.update({"dt": 0.1, "start_frame": 1, "end_frame": N_FRAMES})
    document["experimental_data"]["file_path"] = "sim.h5"
    document["phi_filtering"]["enabled"] = False
    document["initial_parameters"]["values"] = TRUTH[mode]
    document["output"]["plots"] = True
    document["compute"]["compilation_cache_dir"] = None
    document["optimization"]["nlsq"]["uncertainty"] = "model"
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_cmc_results(
    dataset_dir: Path,
    mode: str,
    *,
    shard_summaries: bool = True,
    draws: bool = True,
    n_shards: int = 6,
    seed: int = 1,
) -> dict:
    """A synthetic ``cmc/result.json`` + ``cmc/posterior.h5`` as ``homodyne_mpi.cmc`` writes them.

    Columns: per-angle scaling, the physical parameters, then the noise scale ``sigma``.
    Shard 2 is excluded as an outlier, shard 4 failed with an error; the others are used.
    """
    rng = np.random.default_rng(seed)
    physical = PHYSICAL[mode]
    names = ["contrast[0]", "contrast[1]", "offset[0]", "offset[1]", *physical, "sigma"]
    mean = np.array([0.5, 0.5, 1.0, 1.0, *TRUTH[mode], 0.01])
    std = np.abs(mean) * 0.01 + 1e-6
    correlation = np.eye(len(names))
    correlation[4, 5] = correlation[5, 4] = -0.7
    covariance = correlation * np.outer(std, std)
    combined = rng.multivariate_normal(mean, covariance, size=2000)
    used = [0, 1, 3, 5]
    shard_means = mean + rng.normal(size=(len(used), len(names))) * std
    shard_covariances = np.stack([covariance * n_shards] * len(used))
    shards = []
    for index in range(n_shards):
        shards.append(
            {
                "index": index,
                "n_points": 500,
                "rank": index % 2,
                "host": "node1",
                "rhat_max": 1.0 + 0.02 * rng.random(),
                "ess_min": 400.0 + 100 * rng.random(),
                "divergences": int(rng.integers(0, 3)),
                "divergence_rate": 0.001,
                "ok": True,
                "error": None,
                "traceback": None,
                "seconds": 1.5,
                "excluded_reason": None,
            }
        )
    shards[2].update(ok=False, excluded_reason="outlier: modified z-score 5.2 > 3.5 in D0")
    shards[4].update(
        ok=False,
        error="FloatingPointError: nan in potential energy",
        traceback="Traceback (most recent call last):\n ...",
        excluded_reason="failed: FloatingPointError: nan in potential energy",
        rhat_max=None,
        ess_min=None,
        divergences=None,
        divergence_rate=None,
    )
    summary = {
        name: {
            "mean": float(combined[:, k].mean()),
            "std": float(combined[:, k].std()),
            "q05": float(np.quantile(combined[:, k], 0.05)),
            "q50": float(np.quantile(combined[:, k], 0.5)),
            "q95": float(np.quantile(combined[:, k], 0.95)),
            "fixed": False,
        }
        for k, name in enumerate(names)
    }
    document = {
        "method": "cmc",
        "parameters": summary,
        "shards": shards,
        "combination": {
            "method": "robust_consensus_mc",
            "n_shards": n_shards,
            "n_good": 5,
            "min_success_rate": 0.5,
            "max_divergence_rate": 0.1,
            "max_rhat": 1.1,
            "outlier_zscore": 3.5,
            "failed": [{"index": 4, "rank": 0, "error": shards[4]["error"]}],
            "excluded_diagnostics": [],
            "used": used,
            "n_used": len(used),
            "excluded_outliers": [{"index": 2, "reason": shards[2]["excluded_reason"]}],
        },
        "n_ranks": 2,
        "n_points": 3000,
        "n_shards": n_shards,
        "n_draws": 2000,
        "timing_s": {"sampling": 12.0, "combine": 0.2},
    }
    cmc_dir = dataset_dir / "cmc"
    cmc_dir.mkdir(parents=True, exist_ok=True)
    (cmc_dir / "result.json").write_text(json.dumps(document))
    posterior = {
        "names": np.asarray(names, dtype="S"),
        "mean": combined.mean(axis=0),
        "fixed": np.zeros(len(names), dtype=np.uint8),
    }
    if draws:
        posterior["draws"] = combined
    if shard_summaries:
        keys = ("shards/index", "shards/mean", "shards/covariance")
        posterior.update(zip(keys, (np.asarray(used), shard_means, shard_covariances)))
    with h5py.File(cmc_dir / "posterior.h5", "w") as handle:
        for key, value in posterior.items():
            handle[key] = value
    return {"document": document, "posterior": posterior}


def read_posterior(path: Path) -> dict:
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def nlsq_runs(tmp_path_factory):
    """One real NLSQ run per mode with ``output.plots: true``: ``out/sim/nlsq/{result.json,fit.h5,plots/}``.

    The figures the run drew are kept aside in ``pipeline_plots/`` (tests redraw into the
    results folder).
    """
    runs = {}
    for mode in MODES:
        folder = tmp_path_factory.mktemp(f"plots_{mode}")
        config = make_config(folder, mode)
        phi = ",".join(f"{p:g}" for p in PHI)
        check(
            run_cli(
                "simulate",
                str(config),
                "--output",
                str(folder / "sim.h5"),
                f"--phi={phi}",
                "--noise",
                "0.01",
                timeout=TIMEOUT,
                cwd=folder,
            )
        )
        check(run_cli("run", str(config), "--method", "nlsq", "--output-dir", str(folder / "out"), timeout=TIMEOUT, cwd=folder))
        drawn = folder / "out" / "sim" / "nlsq" / "plots"
        assert drawn.is_dir(), "the run drew no figures with output.plots: true"
        shutil.copytree(drawn, folder / "pipeline_plots")
        shutil.rmtree(drawn)
        runs[mode] = folder / "out"
    return runs


def pipeline_plots(nlsq_runs, mode) -> Path:
    return nlsq_runs[mode].parent / "pipeline_plots"


@pytest.mark.parametrize("mode", MODES)
def test_run_draws_the_nlsq_figures(nlsq_runs, mode):
    """``homodyne-mpi run`` with ``output.plots: true``: one figure per angle and J(t), readable PNGs."""
    drawn = pipeline_plots(nlsq_runs, mode)
    names = sorted(p.name for p in drawn.glob("*.png"))
    assert names == sorted([f"c2_phi_{k}_{p:g}deg.png" for k, p in enumerate(PHI)] + ["transport.png"])
    for k, p in enumerate(PHI):
        rgb = assert_drawn(drawn / f"c2_phi_{k}_{p:g}deg.png", min_colours=200)
        assert rgb.shape[:2] == (560, 1550)
    assert_drawn(drawn / "transport.png", min_size=(600, 450), min_colours=20)


# -- NLSQ figures ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nlsq_figures_from_the_pipeline_hook(nlsq_runs, mode):
    dataset = nlsq_runs[mode] / "sim"
    document = json.loads((dataset / "nlsq" / "result.json").read_text())
    arrays = read_fit_arrays(dataset / "nlsq" / "fit.h5")
    with AsyncWriter() as writer:
        paths = plots.submit_nlsq_figures(writer, dataset, document, arrays)
    plots_dir = dataset / "nlsq" / "plots"
    expected = [plots_dir / f"c2_phi_{k}_{p:g}deg.png" for k, p in enumerate(PHI)] + [plots_dir / "transport.png"]
    assert [p.resolve() for p in paths] == [p.resolve() for p in expected]
    for path in expected[:-1]:
        rgb = assert_drawn(path, min_colours=200)
        assert rgb.shape[:2] == (560, 1550)
        # three image panels: the measured one and the fitted one are drawn in colour
        middle = rgb[250]
        assert np.ptp(middle[100:400].astype(int), axis=0).max() > 50
    transport = assert_drawn(expected[-1], min_size=(600, 450), min_colours=20)
    assert transport.shape[1] == (1200 if mode == "laminar_flow" else 650)
    # the pipeline's figures are these, pixel for pixel
    for path in expected:
        np.testing.assert_array_equal(pixels(path), pixels(pipeline_plots(nlsq_runs, mode) / path.name), err_msg=path.name)
    # the same arrays untouched by drawing
    again = read_fit_arrays(dataset / "nlsq" / "fit.h5")
    for key in ("c2_exp", "c2_fit"):
        np.testing.assert_array_equal(arrays[key], again[key])


@pytest.mark.parametrize("mode", MODES)
def test_plot_command_redraws_identical_figures(nlsq_runs, mode, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(nlsq_runs[mode], out)
    dataset = out / "sim"
    write_cmc_results(dataset, mode)
    document = json.loads((dataset / "nlsq" / "result.json").read_text())
    cmc = json.loads((dataset / "cmc" / "result.json").read_text())
    posterior = read_posterior(dataset / "cmc" / "posterior.h5")
    with AsyncWriter() as writer:
        first = plots.submit_nlsq_figures(writer, dataset, document, read_fit_arrays(dataset / "nlsq" / "fit.h5"))
        first += plots.submit_cmc_figures(writer, dataset, cmc, posterior, nlsq_doc=document)
    assert len(first) == len(PHI) + 1 + 3
    reference = {path.relative_to(out): pixels(path) for path in first}
    for method in ("nlsq", "cmc"):
        shutil.rmtree(dataset / method / "plots")

    result = check(run_cli("plot", str(out), timeout=TIMEOUT))
    assert f"wrote {len(first)} figure(s)" in result.stdout
    for relative, expected in reference.items():
        redrawn = pixels(out / relative)
        assert redrawn.shape == expected.shape, relative
        np.testing.assert_array_equal(redrawn, expected, err_msg=str(relative))

    # one data set folder, or its method folder, works as well
    shutil.rmtree(dataset / "nlsq" / "plots")
    assert redraw_results(dataset) == 0
    assert len(list((dataset / "nlsq" / "plots").glob("*.png"))) == len(PHI) + 1
    assert redraw_results(dataset / "cmc") == 0


def test_hook_only_queues_work_on_the_writer(nlsq_runs, tmp_path):
    """Nothing is drawn in the caller: each figure is one submit_call run later by the writer."""
    dataset = tmp_path / "sim"
    shutil.copytree(nlsq_runs["laminar_flow"] / "sim", dataset)
    shutil.rmtree(dataset / "nlsq" / "plots", ignore_errors=True)  # drawn by an earlier test
    calls = []

    class RecordingWriter:
        def submit_call(self, path, fn, *args, **kwargs):
            calls.append((Path(path), fn, args, kwargs))

    document = json.loads((dataset / "nlsq" / "result.json").read_text())
    paths = plots.submit_nlsq_figures(RecordingWriter(), dataset, document, read_fit_arrays(dataset / "nlsq" / "fit.h5"))
    assert [c[0] for c in calls] == paths
    assert not (dataset / "nlsq" / "plots").exists()
    for path, fn, args, kwargs in calls:
        path.parent.mkdir(parents=True, exist_ok=True)
        fn(path, *args, **kwargs)
        assert_drawn(path, min_colours=10)


def test_large_matrix_drawn_from_block_means(tmp_path):
    """1203 frames: drawn at 401 x 401 (3 x 3 block means) while the input stays as it was."""
    n = 1203
    t = np.arange(n) * 0.01
    rng = np.random.default_rng(5)
    fit = 1.0 + 0.3 * np.exp(-np.abs(t[:, None] - t[None, :]))
    exp = fit + rng.normal(scale=0.01, size=fit.shape)
    exp[np.diag_indices(n)] += 0.5  # the speckle spike on the diagonal
    arrays = {"c2_exp": exp[None].copy(), "c2_fit": fit[None].copy()}
    panels = c2_figure.c2_panels(arrays["c2_exp"][0], arrays["c2_fit"][0], 0.01)
    assert panels["factor"] == 3
    assert panels["measured"].shape == panels["fitted"].shape == panels["residual"].shape == (401, 401)
    # the corrected diagonal hides the spike; the residual ignores the diagonal
    assert np.nanmax(panels["measured"]) < 1.35
    assert np.nanmax(np.abs(panels["residual"])) < 3.0
    low, high = panels["c2_limits"]
    assert 0.95 < low < high < 1.35
    np.testing.assert_array_equal(arrays["c2_exp"][0], exp)
    info = nlsq_figures.NLSQFigureInfo(
        dataset="big",
        analysis_mode="static",
        q=0.0054,
        dt=0.01,
        phi=np.array([12.345]),
        noise_sigma=np.array([0.01]),
        t=t,
        names=("contrast", "offset", "D0", "alpha", "D_offset"),
        values=np.array([0.3, 1.0, 1e3, 0.0, 0.0]),
        std=np.full(5, 1e-3),
        reduced_chi2=1.0,
        converged=True,
    )
    path = tmp_path / nlsq_figures.c2_plot_name(0, 12.345)
    assert path.name == "c2_phi_0_12.35deg.png"
    c2_figure.draw_c2_angle(path, arrays, 0, info)
    assert pixels(path).shape[:2] == (560, 1550)
    assert_drawn(path, min_colours=200)


def test_c2_panels_match_plain_block_means():
    rng = np.random.default_rng(11)
    n, sigma = 23, 0.02
    fit = 1.0 + rng.random((n, n))
    exp = fit + rng.normal(scale=sigma, size=(n, n))
    panels = c2_figure.c2_panels(exp, fit, sigma, max_pixels=6)
    factor = panels["factor"]
    assert factor == 4
    corrected = exp.copy()
    np.fill_diagonal(corrected, downsample.corrected_diagonal(exp))
    residual = (exp - fit) / sigma
    np.fill_diagonal(residual, np.nan)
    np.testing.assert_allclose(panels["measured"], reference_block_mean(corrected, factor), rtol=1e-12)
    np.testing.assert_allclose(panels["fitted"], reference_block_mean(fit, factor), rtol=1e-12)
    np.testing.assert_allclose(panels["residual"], reference_block_mean(residual, factor), rtol=1e-9, atol=1e-12)
    # no downsampling: the residual's diagonal is blank
    full = c2_figure.c2_panels(exp, fit, sigma)
    assert full["factor"] == 1 and np.all(np.isnan(np.diagonal(full["residual"])))


def test_reused_figure_draws_what_a_fresh_one_draws(tmp_path):
    """Each thread redraws one figure per angle; nothing of an earlier angle or data set stays."""
    import threading

    def data(n, seed):
        rng = np.random.default_rng(seed)
        t = np.arange(n) * 0.1
        fit = 1.0 + 0.3 * np.exp(-np.abs(t[:, None] - t[None, :]) / (1 + seed))
        exp = fit + rng.normal(scale=0.01, size=fit.shape)
        info = nlsq_figures.NLSQFigureInfo(
            dataset=f"set{seed}",
            analysis_mode="static",
            q=0.01,
            dt=0.1,
            phi=np.array([0.0, 90.0]),
            noise_sigma=np.array([0.01, 0.02]),
            t=t,
            names=("contrast", "offset"),
            values=np.array([0.3, 1.0]),
            std=np.array([1e-3, 1e-3]),
            reduced_chi2=1.0,
            converged=True,
        )
        return {"c2_exp": np.stack([exp, exp[::-1, ::-1]]), "c2_fit": np.stack([fit, fit])}, info

    first, first_info = data(30, 0)
    second, second_info = data(700, 1)

    def fresh(path, arrays, k, info):
        done = threading.Thread(target=c2_figure.draw_c2_angle, args=(path, arrays, k, info))
        done.start()
        done.join()
        return pixels(path)

    reference = fresh(tmp_path / "a.png", first, 1, first_info)
    c2_figure.draw_c2_angle(tmp_path / "b.png", second, 0, second_info)
    c2_figure.draw_c2_angle(tmp_path / "c.png", first, 0, first_info)
    c2_figure.draw_c2_angle(tmp_path / "d.png", first, 1, first_info)
    np.testing.assert_array_equal(pixels(tmp_path / "d.png"), reference)
    np.testing.assert_array_equal(pixels(tmp_path / "b.png"), fresh(tmp_path / "e.png", second, 0, second_info))


# -- CMC figures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_cmc_figures(tmp_path, mode):
    dataset = tmp_path / "sample"
    made = write_cmc_results(dataset, mode)
    nlsq_doc = {"parameters": {n: {"value": v} for n, v in zip(PHYSICAL[mode], TRUTH[mode])}}
    with AsyncWriter() as writer:
        paths = plots.submit_cmc_figures(writer, dataset, made["document"], made["posterior"], nlsq_doc=nlsq_doc)
    plots_dir = dataset / "cmc" / "plots"
    assert paths == [plots_dir / "marginals.png", plots_dir / "pairs.png", plots_dir / "shard_health.png"]
    marginals = assert_drawn(paths[0], min_size=(1000, 400), min_colours=20)
    pairs = assert_drawn(paths[1], min_size=(600, 600), min_colours=20)
    assert_drawn(paths[2], min_size=(700, 700), min_colours=8)
    n = len(PHYSICAL[mode])
    assert pairs.shape[0] >= 150 * n  # one row of panels per physical parameter
    assert marginals.shape[1] >= 1000
    # excluded shards are drawn in red (tab:red = 214, 39, 40)
    health = pixels(paths[2]).astype(int)
    red = (np.abs(health - np.array([214, 39, 40])).sum(axis=2) < 30).mean()
    assert red > 0.001


def test_cmc_figure_info_keeps_only_retained_shards(tmp_path):
    made = write_cmc_results(tmp_path / "d", "laminar_flow")
    info = cmc_figures.cmc_figure_info(made["document"], read_posterior(tmp_path / "d" / "cmc" / "posterior.h5"))
    assert info.retained == {0, 1, 3, 5}
    assert [info.shard_index[row] for row in cmc_figures._retained_rows(info)] == [0, 1, 3, 5]
    assert info.physical == tuple(PHYSICAL["laminar_flow"])  # sigma and the scaling are not drawn
    assert info.analysis_mode == "laminar_flow"
    assert info.shard_stds.shape == (4, 12)
    states = [shard_health.shard_state(s) for s in made["document"]["shards"]]
    assert states == ["retained", "retained", "excluded", "retained", "failed", "retained"]
    assert shard_health.shard_reason(made["document"]["shards"][4], "failed") == "FloatingPointError: nan in potential energy"


def test_cmc_figures_leave_out_fixed_parameters(tmp_path):
    made = write_cmc_results(tmp_path / "d", "static")
    posterior = dict(made["posterior"])
    fixed = np.zeros(len(posterior["names"]), dtype=np.uint8)
    fixed[list(map(bytes.decode, posterior["names"])).index("D_offset")] = 1
    posterior["fixed"] = fixed
    info = cmc_figures.cmc_figure_info(made["document"], posterior)
    assert info.physical == ("D0", "alpha")


def test_cmc_reader_is_tolerant(tmp_path, caplog):
    """Missing arrays skip their panel with a warning; the other figures are still drawn."""
    dataset = tmp_path / "sample"
    made = write_cmc_results(dataset, "static", shard_summaries=False)
    with caplog.at_level(logging.WARNING, logger="homodyne_mpi.plots"), AsyncWriter() as writer:
        paths = plots.submit_cmc_figures(writer, dataset, made["document"], made["posterior"])
    assert [p.name for p in paths] == ["marginals.png", "pairs.png", "shard_health.png"]
    assert "no per-shard summaries" in caplog.text
    for path in paths:
        assert_drawn(path, min_colours=8)

    caplog.clear()
    other = tmp_path / "no_draws"
    made = write_cmc_results(other, "static", draws=False)
    with caplog.at_level(logging.WARNING, logger="homodyne_mpi.plots"), AsyncWriter() as writer:
        paths = plots.submit_cmc_figures(writer, other, made["document"], made["posterior"])
    assert [p.name for p in paths] == ["marginals.png", "shard_health.png"]
    assert "skipping pairs.png" in caplog.text

    # posterior.h5 gone: `plot` still draws the shard health from result.json
    (other / "cmc" / "posterior.h5").unlink()
    shutil.rmtree(other / "cmc" / "plots")
    assert redraw_results(other) == 0
    assert sorted(p.name for p in (other / "cmc" / "plots").glob("*.png")) == ["shard_health.png"]


# -- J(t), gamma_dot(t) and their bands -------------------------------------------------------------


def test_saved_bands_match_the_model_and_finite_differences(nlsq_runs):
    """``fit.h5``'s ``bands/*`` (the one computation, ``nlsq.bands``) are the model's rates at
    the model's times, with the delta-method 1-sigma of the saved covariance."""
    import jax.numpy as jnp

    from homodyne_mpi.model.transport import power_law_rate, rate_times

    dataset = nlsq_runs["laminar_flow"] / "sim"
    document = json.loads((dataset / "nlsq" / "result.json").read_text())
    arrays = read_fit_arrays(dataset / "nlsq" / "fit.h5")
    names = [n.decode() for n in arrays["parameters/names"]]
    values = np.asarray(arrays["parameters/values"])
    t = np.asarray(rate_times(N_FRAMES, 0.1))
    np.testing.assert_allclose(arrays["bands/t"], t, rtol=1e-12)
    assert t[0] == pytest.approx(0.05)
    for rate, std, group in (
        ("D", "D_std_model", ("D0", "alpha", "D_offset")),
        ("gamma_dot", "gamma_dot_std_model", ("gamma_dot_t0", "beta", "gamma_dot_t_offset")),
    ):
        index = [names.index(n) for n in group]
        params = values[index]
        np.testing.assert_allclose(arrays[f"bands/{rate}"], np.asarray(power_law_rate(jnp.asarray(t), *params)), rtol=1e-12)
        jacobian = np.empty((t.size, 3))
        for k in range(3):
            step = np.zeros(3)
            step[k] = 1e-6 * max(abs(params[k]), 1e-3)
            up = np.asarray(power_law_rate(jnp.asarray(t), *(params + step)))
            down = np.asarray(power_law_rate(jnp.asarray(t), *(params - step)))
            jacobian[:, k] = (up - down) / (2 * step[k])
        covariance = np.asarray(arrays["covariance"])[np.ix_(index, index)]
        expected = np.sqrt(np.einsum("ti,ij,tj->t", jacobian, covariance, jacobian))
        np.testing.assert_allclose(arrays[f"bands/{std}"], expected, rtol=1e-5)
    assert document["analysis_mode"] == "laminar_flow"


def test_transport_draws_the_saved_bands_and_skips_without_them(nlsq_runs, tmp_path, caplog):
    dataset = nlsq_runs["laminar_flow"] / "sim"
    document = json.loads((dataset / "nlsq" / "result.json").read_text())
    arrays = read_fit_arrays(dataset / "nlsq" / "fit.h5")
    info = nlsq_figures.figure_info(document, arrays)
    curves = nlsq_figures.transport_curves(info, nlsq_figures._bands(arrays))
    np.testing.assert_array_equal(curves.D, arrays["bands/D"])
    np.testing.assert_array_equal(curves.D_std, arrays["bands/D_std"])
    np.testing.assert_array_equal(curves.gamma_dot_std, arrays["bands/gamma_dot_std"])
    assert curves.band_source == ("jackknife" if "bands/D_std_jackknife" in arrays else "covariance")
    doubled = {**arrays, "bands/D_std": 2 * arrays["bands/D_std"]}
    np.testing.assert_array_equal(
        nlsq_figures.transport_curves(info, nlsq_figures._bands(doubled)).D_std, 2 * arrays["bands/D_std"]
    )
    without = {key: value for key, value in arrays.items() if not key.startswith("bands/")}
    assert nlsq_figures.transport_curves(info, nlsq_figures._bands(without)) is None
    with caplog.at_level(logging.WARNING, logger="homodyne_mpi.plots"), AsyncWriter() as writer:
        paths = plots.submit_nlsq_figures(writer, tmp_path, document, without)
    assert [p.name for p in paths] == [nlsq_figures.c2_plot_name(k, p) for k, p in enumerate(PHI)]
    assert "skipping transport.png" in caplog.text


# -- downsampling ---------------------------------------------------------------------------------


def reference_block_mean(matrix, factor, diagonal=None, skip_diagonal=False):
    data = np.array(matrix, dtype=float)
    if diagonal is not None:
        np.fill_diagonal(data, diagonal)
    if skip_diagonal:
        np.fill_diagonal(data, np.nan)
    data[~np.isfinite(data)] = np.nan
    rows = range(0, data.shape[0], factor)
    cols = range(0, data.shape[1], factor)
    out = np.full((len(rows), len(cols)), np.nan)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            block = data[i : i + factor, j : j + factor]
            if np.isfinite(block).any():
                out[a, b] = np.nanmean(block)
    return out


@pytest.mark.parametrize("shape,factor", [((10, 10), 1), ((10, 10), 3), ((17, 17), 4), ((9, 12), 5), ((2, 2), 2)])
def test_block_mean_matches_a_plain_loop(shape, factor):
    rng = np.random.default_rng(sum(shape) + factor)
    matrix = rng.normal(size=shape)
    for diagonal, skip in ((None, False), (rng.normal(size=min(shape)), False), (None, True)):
        np.testing.assert_allclose(
            downsample.block_mean(matrix, factor, diagonal=diagonal, skip_diagonal=skip),
            reference_block_mean(matrix, factor, diagonal, skip),
            rtol=1e-12,
            equal_nan=True,
        )
    holes = matrix.copy()
    holes[0, :] = np.nan
    holes[-1, -1] = np.inf
    np.testing.assert_allclose(
        downsample.block_mean(holes, factor), reference_block_mean(holes, factor), rtol=1e-12, equal_nan=True
    )


def test_corrected_diagonal_and_limits():
    c2 = np.arange(16.0).reshape(4, 4)
    neighbour = downsample.corrected_diagonal(c2)
    assert neighbour[0] == pytest.approx((c2[0, 1] + c2[1, 0]) / 2)
    assert neighbour[1] == pytest.approx((c2[0, 1] + c2[1, 0] + c2[1, 2] + c2[2, 1]) / 4)
    assert neighbour[3] == pytest.approx((c2[2, 3] + c2[3, 2]) / 2)
    assert downsample.block_factor(500) == 1 and downsample.block_factor(501) == 2 and downsample.block_factor(2000) == 4
    assert downsample.block_edges(np.arange(10) * 0.1, 4) == pytest.approx((-0.05, 1.15, 0.95))
    low, high = downsample.robust_limits(np.array([1.0, 2.0, np.nan]), np.array([3.0]))
    assert 1.0 <= low < high <= 3.0
    assert downsample.symmetric_limit(np.array([-4.0, 1.0, np.nan]), 100) == 4.0


def test_angle_in_file_names():
    assert nlsq_figures.c2_plot_name(0, -57.0) == "c2_phi_0_-57deg.png"
    assert nlsq_figures.c2_plot_name(3, -0.0) == "c2_phi_3_0deg.png"
    assert nlsq_figures.c2_plot_name(11, 135.125) == "c2_phi_11_135.12deg.png"


# -- bad input and a missing matplotlib ---------------------------------------------------------------


def test_redraw_errors_are_one_line(tmp_path, nlsq_runs):
    with pytest.raises(InputError, match="no such folder"):
        redraw_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results found"):
        redraw_results(tmp_path / "empty")

    broken = tmp_path / "broken"
    shutil.copytree(nlsq_runs["static"], broken)
    (broken / "sim" / "nlsq" / "result.json").write_text("{not json")
    with pytest.raises(InputError, match="result.json: not a readable result file") as caught:
        redraw_results(broken)
    assert "\n" not in str(caught.value)

    shutil.rmtree(broken)
    shutil.copytree(nlsq_runs["static"], broken)
    shutil.rmtree(broken / "sim" / "nlsq" / "plots", ignore_errors=True)  # drawn by an earlier test
    with h5py.File(broken / "sim" / "nlsq" / "fit.h5", "a") as handle:
        del handle["c2_fit"]
    with pytest.raises(InputError, match="dataset 'c2_fit' is missing"):
        redraw_results(broken)
    assert not (broken / "sim" / "nlsq" / "plots").exists()

    (broken / "sim" / "nlsq" / "fit.h5").write_bytes(b"not hdf5")
    result = check(run_cli("plot", str(broken), timeout=TIMEOUT), code=2)
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "fit.h5: not a readable HDF5 file" in lines[0], describe(result)


def test_without_matplotlib_plots_are_skipped_with_one_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(backend, "matplotlib_available", lambda: False)
    monkeypatch.setattr(backend, "_MISSING_WARNED", False)
    made = write_cmc_results(tmp_path / "d", "static")
    with caplog.at_level(logging.WARNING, logger="homodyne_mpi.plots"), AsyncWriter() as writer:
        assert plots.submit_cmc_figures(writer, tmp_path / "d", made["document"], made["posterior"]) == []
        assert plots.submit_nlsq_figures(writer, tmp_path / "d", {}, {}) == []
    assert caplog.text.count("matplotlib is not installed") == 1
    assert not (tmp_path / "d" / "cmc" / "plots").exists()
    with pytest.raises(HomodyneError, match=r"homodyne-mpi\[plots\]") as caught:
        redraw_results(tmp_path / "d")
    assert caught.value.exit_code == 1


def test_importing_never_loads_matplotlib_and_works_without_it():
    code = (
        "import sys\n"
        "import homodyne_mpi.plots, homodyne_mpi.plots.nlsq_figures, homodyne_mpi.plots.cmc_figures\n"
        "import homodyne_mpi.plots.redraw, homodyne_mpi.report\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from homodyne_mpi.plots import plotting_available, submit_cmc_figures\n"
        "assert not plotting_available()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    assert "matplotlib is not installed" in done.stderr


def test_png_writer_saves_the_canvas_as_drawn(tmp_path):
    """``write_png`` (matplotlib's writer) stores exactly the pixels the Agg canvas holds."""
    figure = plots.new_figure(2.0, 1.5)
    ax = figure.subplots()
    ax.imshow(np.random.default_rng(3).random((20, 30)))
    figure.canvas.draw()
    path = tmp_path / "x.png"
    plots.write_png(figure.canvas, path)
    np.testing.assert_array_equal(pixels(path), np.asarray(figure.canvas.buffer_rgba())[..., :3])
