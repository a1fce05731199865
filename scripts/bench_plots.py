"""Plotting overhead: drawing every NLSQ figure of 20 angles x 2000 x 2000 vs the fit's wall time.

Usage: python scripts/bench_plots.py [--angles 20] [--frames 2000] [--workdir DIR]
                                     [--output bench_results/bench_plots.json] [--skip-fit]
                                     [--end-to-end]

Steps (all on this machine, one process each, rank 0 only):

1. ``homodyne-mpi simulate`` writes laminar-flow data (``--angles`` angles, ``--frames``
   frames, float32 like a correlator's files) with noise.
2. ``homodyne-mpi run --method nlsq`` fits it with ``output.plots: false``: its wall time
   (process start to exit) is the fit's wall time the overhead is compared with. It also
   writes the real ``nlsq/fit.h5`` (c2_exp, c2_fit, residual: 3 x 640 MB at 20 x 2000^2).
   With ``--skip-fit`` a synthetic ``fit.h5`` and ``result.json`` of the same size are
   written instead (model matrices plus noise) and no ratio is computed.
3. Drawing, as the pipeline does it: ``fit.h5``'s arrays in memory, every figure queued
   with :func:`homodyne_mpi.plots.submit_nlsq_figures` on an ``AsyncWriter`` with two
   threads, timed from the first submit until the last PNG is on disk. This is the most
   drawing can add to a run (in a batch it overlaps the next data set's fit).
4. ``homodyne-mpi plot`` on the results (reads ``fit.h5`` one angle at a time): its wall
   time, process start included.
5. With ``--end-to-end``, ``run`` again with ``output.plots: true``, alternating with
   ``false`` (``--pairs``): the difference of the median run times is what the figures
   add to a run, measured directly (the drawing overlaps the writing of ``fit.h5``).

The JSON (``--output``) holds the sizes, every time, the figure count and PNG sizes, the
peak memory of the drawing process, and the ratios ``plot / fit`` (target < 0.10): of wall
times, and of CPU times (less sensitive to other work on a shared machine: the fit's CPU
time counts every core it used).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
"""D0, alpha, D_offset, gamma_dot_t0, beta, gamma_dot_t_offset, phi0 of the simulated data."""
DT = 0.05
NOISE = 0.01


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``homodyne-mpi ARGS``; returns its wall time (s) and the finished process.

    The child's CPU seconds (user + system, all its threads) are in ``done.cpu_s``.
    """
    start, cpu_start = time.perf_counter(), children_cpu_s()
    done = subprocess.run([sys.executable, "-m", "homodyne_mpi", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    done.cpu_s = children_cpu_s() - cpu_start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"homodyne-mpi {' '.join(args)} failed with exit code {done.returncode}")
    return seconds, done


def write_config(path: Path, n_frames: int, plots: bool) -> None:
    from homodyne_mpi.config import render_template

    config = yaml.safe_load(render_template("laminar_flow"))
    config["analyzer_parameters"].update({"dt": DT, "start_frame": 1, "end_frame": n_frames})
    config["experimental_data"]["file_path"] = "bench.h5"
    config["phi_filtering"]["enabled"] = False
    config["initial_parameters"]["values"] = TRUTH
    config["initial_parameters"]["per_angle_scaling"].update({"contrast": 0.3, "offset": 1.0})
    config["optimization"]["nlsq"]["uncertainty"] = "model"
    config["output"]["plots"] = plots
    config["compute"]["compilation_cache_dir"] = None
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def angles(n: int) -> list[float]:
    return [round(-90.0 + 180.0 * k / n, 3) for k in range(n)]


def synthetic_results(folder: Path, n_angles: int, n_frames: int) -> None:
    """A ``fit.h5`` and ``result.json`` of the requested size without fitting (``--skip-fit``)."""
    import h5py

    phi = np.array(angles(n_angles))
    t = np.arange(n_frames) * DT
    rate = 1e4 * np.maximum(t, DT / 2) ** -0.5 + 5.0
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * DT * (rate[:-1] + rate[1:]))])
    q = 0.0054
    g1 = np.exp(-0.5 * q * q * np.abs(cumulative[None, :] - cumulative[:, None]))
    rng = np.random.default_rng(0)
    names = [f"contrast[{k}]" for k in range(n_angles)] + [f"offset[{k}]" for k in range(n_angles)]
    names += ["D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"]
    values = np.array([0.3] * n_angles + [1.0] * n_angles + TRUTH)
    std = np.abs(values) * 1e-3 + 1e-6
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "fit.h5", "w") as handle:
        fit = 1.0 + 0.3 * g1 * g1
        c2_exp = handle.create_dataset("c2_exp", (n_angles, n_frames, n_frames), dtype="f8")
        c2_fit = handle.create_dataset("c2_fit", (n_angles, n_frames, n_frames), dtype="f8")
        for k in range(n_angles):
            c2_fit[k] = fit
            c2_exp[k] = fit + rng.normal(scale=NOISE, size=fit.shape)
        handle["t"] = t
        handle["phi"] = phi
        handle["covariance"] = np.diag(std**2)
        handle["parameters/names"] = np.asarray(names, dtype="S")
        handle["parameters/values"] = values
        handle["parameters/std_model"] = std
        handle["noise_sigma"] = np.full(n_angles, NOISE)
    document = {
        "method": "nlsq",
        "dataset": "bench",
        "analysis_mode": "laminar_flow",
        "converged": True,
        "reduced_chi2": 1.0,
        "chi2": 1.0,
        "iterations": 0,
        "n_points": n_angles * n_frames * (n_frames - 1) // 2,
        "parameters": {
            n: {"value": float(v), "std": float(s), "std_model": float(s), "std_jackknife": None, "fixed": False}
            for n, v, s in zip(names, values, std)
        },
        "data": {"q": q, "dt": DT, "phi": phi.tolist(), "noise_sigma": [NOISE] * n_angles},
    }
    (folder / "result.json").write_text(json.dumps(document))


def draw_in_memory(dataset_dir: Path, plots_root: Path, repeats: int) -> dict:
    """Queue every NLSQ figure from in-memory arrays on an AsyncWriter, as the pipeline does.

    Best of ``repeats`` (each in fresh writer threads, so each builds its figures anew);
    ``draw_cpu_s`` is the process's CPU time over that repeat (all threads).
    """
    import h5py

    from homodyne_mpi.io import AsyncWriter
    from homodyne_mpi.plots import submit_nlsq_figures

    document = json.loads((dataset_dir / "nlsq" / "result.json").read_text())
    start = time.perf_counter()
    with h5py.File(dataset_dir / "nlsq" / "fit.h5", "r") as handle:
        arrays = {
            name: handle[name][()]
            for name in ("c2_exp", "c2_fit", "t", "phi", "covariance", "parameters/names", "parameters/values", "noise_sigma")
        }
    read_s = time.perf_counter() - start
    import matplotlib.figure  # noqa: F401  (import once, as a long-running pipeline has)

    out = plots_root / dataset_dir.name
    runs = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        with AsyncWriter(max_workers=2) as writer:
            paths = submit_nlsq_figures(writer, out, document, arrays)
            submit_s = time.perf_counter() - start
        runs.append({"draw_s": time.perf_counter() - start, "draw_cpu_s": time.process_time() - cpu_start, "submit_s": submit_s})
    best = min(runs, key=lambda run: run["draw_s"])
    sizes = [p.stat().st_size for p in paths]
    return {
        "read_fit_h5_s": read_s,
        **best,
        "draw_s_all_repeats": [run["draw_s"] for run in runs],
        "n_figures": len(paths),
        "png_bytes_min": min(sizes),
        "png_bytes_max": max(sizes),
    }


def end_to_end(work: Path, out: Path, n_frames: int, pairs: int, first_wall: float, first_cpu: float) -> dict:
    """``run`` with ``output.plots: true`` and ``false`` in alternation: what the figures add.

    The first run without figures is the benchmark's fit already done; each pair adds one
    run with figures and (after the first pair) one without. A shared machine's load
    drifts, so the runs alternate and the medians are compared; the CPU times (all
    threads) are the steadier measure.
    """
    import statistics

    runs = {False: [(first_wall, first_cpu)], True: []}
    drawn = 0
    for pair in range(pairs):
        for plots in (True,) if pair == 0 else (False, True):
            write_config(work / "bench.yaml", n_frames, plots=plots)
            shutil.rmtree(out, ignore_errors=True)
            seconds, done = cli("run", "bench.yaml", "--method", "nlsq", "--output-dir", "out", cwd=work)
            runs[plots].append((seconds, done.cpu_s))
            if plots:
                folder = out / "bench" / "nlsq" / "plots"
                drawn = len(list(folder.glob("*.png"))) if folder.is_dir() else 0
            print(f"run with plots={plots}: {seconds:.1f} s wall, {done.cpu_s:.1f} s CPU", flush=True)
    without_wall = statistics.median(w for w, _ in runs[False])
    with_wall = statistics.median(w for w, _ in runs[True])
    without_cpu = statistics.median(c for _, c in runs[False])
    with_cpu = statistics.median(c for _, c in runs[True])
    return {
        "runs_without_plots": [{"wall_s": w, "cpu_s": c} for w, c in runs[False]],
        "runs_with_plots": [{"wall_s": w, "cpu_s": c} for w, c in runs[True]],
        "figures_written_by_run": drawn,
        "median_wall_without_s": without_wall,
        "median_wall_with_s": with_wall,
        "added_wall_fraction": (with_wall - without_wall) / without_wall,
        "added_cpu_fraction": (with_cpu - without_cpu) / without_cpu,
        "note": None if drawn else "the pipeline wrote no figures (output.plots not wired)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--angles", type=int, default=20)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--workdir", default=str(REPO / "bench_results" / "plots_work"))
    parser.add_argument("--output", default=str(REPO / "bench_results" / "bench_plots.json"))
    parser.add_argument("--skip-fit", action="store_true", help="write a synthetic fit.h5 instead of fitting (no ratio)")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also run the fit with output.plots: true (alternating with false)"
    )
    parser.add_argument("--pairs", type=int, default=2, help="with/without-figures run pairs of --end-to-end")
    parser.add_argument("--repeats", type=int, default=3, help="drawing repeats (the fastest is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (several GB)")
    args = parser.parse_args()

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict = {"n_angles": args.angles, "n_frames": args.frames, "machine": machine(), "load_average_start": os.getloadavg()}
    out = work / "out"
    if args.skip_fit:
        start = time.perf_counter()
        synthetic_results(out / "bench" / "nlsq", args.angles, args.frames)
        result["synthetic_fit_h5_s"] = time.perf_counter() - start
    else:
        write_config(work / "bench.yaml", args.frames, plots=False)
        phi = ",".join(f"{p:g}" for p in angles(args.angles))
        seconds, _ = cli(
            "simulate",
            "bench.yaml",
            "--output",
            "bench.h5",
            f"--phi={phi}",
            "--noise",
            str(NOISE),
            "--dtype",
            "float32",
            cwd=work,
        )
        result["simulate_s"] = seconds
        seconds, fitted = cli("run", "bench.yaml", "--method", "nlsq", "--output-dir", "out", cwd=work)
        document = json.loads((out / "bench" / "nlsq" / "result.json").read_text())
        result["fit_wall_s"] = seconds
        result["fit_cpu_s"] = fitted.cpu_s
        result["fit_timing_s"] = document.get("timing_s")
        result["fit_iterations"] = document.get("iterations")
        result["fit_n_points"] = document.get("n_points")
        print(f"fit: {seconds:.1f} s wall, {document.get('iterations')} iterations", flush=True)
    result["fit_h5_bytes"] = (out / "bench" / "nlsq" / "fit.h5").stat().st_size

    result["in_memory"] = draw_in_memory(out / "bench", work / "drawn", args.repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"drawing in the writer: {result['in_memory']['draw_s']:.1f} s", flush=True)

    seconds, done = cli("plot", "out", cwd=work)
    result["plot_command_s"] = seconds
    result["plot_command_figures"] = sum(1 for line in done.stdout.splitlines() if line.strip().endswith(".png"))
    print(f"homodyne-mpi plot: {seconds:.1f} s", flush=True)

    if "fit_wall_s" in result:
        result["ratio_draw_to_fit"] = result["in_memory"]["draw_s"] / result["fit_wall_s"]
        result["ratio_draw_cpu_to_fit_cpu"] = result["in_memory"]["draw_cpu_s"] / result["fit_cpu_s"]
        result["ratio_plot_command_to_fit"] = result["plot_command_s"] / result["fit_wall_s"]
        result["target_ratio"] = 0.10
        result["under_target"] = result["ratio_draw_to_fit"] < 0.10
    if args.end_to_end and not args.skip_fit:
        result["end_to_end"] = end_to_end(work, out, args.frames, args.pairs, result["fit_wall_s"], result["fit_cpu_s"])
    result["load_average_end"] = os.getloadavg()
    write_json(args.output, result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
