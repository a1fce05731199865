#!/usr/bin/env python
"""Benchmark rank-0 I/O overlap: PrefetchLoader and AsyncWriter on a simulated batch.

The batch has K data sets, each a small HDF5 file holding one (n, n) float64 matrix. Per
data set the driver loads the file, fits it, and writes a ``result.json`` and a ``fit.h5``
holding an (n, n) array, as the real pipeline does. Four runs of the same batch:

- ``serial_sync``: load, fit, write, one after the other (no helpers);
- ``serial_async``: load then fit on the main thread, writes through :class:`AsyncWriter`;
- ``prefetch_sync``: :class:`PrefetchLoader` loads data set k+1 while k is fitted;
- ``prefetch_async``: both helpers, the configuration the pipeline uses.

The *fit* is real compute, never a sleep: repeated matrix products (BLAS, releases the
GIL) calibrated to about ``--fit-target`` seconds. The *load* always includes the real
HDF5 read (gzip-compressed, so there is real decompression; h5py holds the GIL while it
reads), topped up to about ``--load-target`` seconds in one of two ways (``--load-kind``):

- ``cpu`` (default): a synthetic preprocessing workload, repeated symmetrise/clip/
  normalise passes over the matrix (elementwise NumPy that releases the GIL). Load and fit
  then compete for CPU cores and memory bandwidth; on a machine without a free core for
  the loader there is little to gain, and the benchmark shows that honestly.
- ``storage``: a simulated storage latency (``time.sleep``) standing for the wait on a
  parallel file system, during which the client CPU is idle, as it is on a real
  Lustre/GPFS read.

Files are read back from the page cache (they were just written), so the real read is
decompression-bound, not disk-bound.

BLAS threads are pinned to 1 by default (``BENCH_IO_BLAS_THREADS``, read before NumPy
loads), so the fit uses one core and the background load another, as on a rank-0 process
that leaves its other cores to other ranks.

Reported in the JSON (``--output``): K, mean load/fit/write times from the serial run,
wall times of the four runs (median over ``--repeats``), the ideal
``load + K * max(load, fit)`` and the serial ``K * (load + fit)``, the ratio
``wall_prefetch / ideal`` (target <= 1.10; also for the best repeat, since a shared VM
with CPU steal makes single runs noisy) and the speedup over the serial run.
"""

from __future__ import annotations

import os
import sys

# BLAS reads its thread count when NumPy loads it, so this must come before `import numpy`.
_BLAS_THREADS = os.environ.get("BENCH_IO_BLAS_THREADS", "1")
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, _BLAS_THREADS)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from homodyne_mpi.io import (  # noqa: E402
    AsyncWriter,
    PrefetchLoader,
    atomic_write_hdf5,
    atomic_write_json,
)

log = logging.getLogger("bench_io")

C2_KEY = "xpcs/twotime/c2"
FIT_BLOCK = 256
"""Side of the square matrices the synthetic fit multiplies (one BLAS thread)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Set BENCH_IO_BLAS_THREADS to change the BLAS thread count (default 1).",
    )
    parser.add_argument("--k", type=int, default=8, help="number of data sets in the batch (default 8)")
    parser.add_argument("--size", type=int, default=1024, help="side n of each (n, n) matrix (default 1024)")
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_io.json"), help="JSON report path")
    parser.add_argument("--load-target", type=float, default=0.3, help="seconds per load (default 0.3)")
    parser.add_argument("--fit-target", type=float, default=0.3, help="seconds per fit (default 0.3)")
    parser.add_argument(
        "--load-kind",
        choices=("cpu", "storage"),
        default="cpu",
        help="how a load is topped up to --load-target: CPU preprocessing or simulated storage wait",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each run; medians reported (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the data files (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.k < 1 or args.size < 2 or args.repeats < 1:
        parser.error("--k and --repeats must be >= 1 and --size >= 2")
    if args.load_target <= 0 or args.fit_target <= 0:
        parser.error("--load-target and --fit-target must be > 0")
    return args


# -- the simulated work ----------------------------------------------------------------


def write_datasets(folder: Path, k: int, size: int, seed: int = 0) -> list[Path]:
    """Write K gzip-compressed HDF5 files, each with a noisy symmetric (size, size) matrix."""
    rng = np.random.default_rng(seed)
    paths = []
    t = np.linspace(0.0, 1.0, size)
    decay = np.exp(-np.abs(t[:, None] - t[None, :]) * 5.0)
    for index in range(k):
        c2 = 1.0 + 0.3 * decay + 0.01 * rng.standard_normal((size, size))
        path = folder / f"dataset_{index:03d}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset(C2_KEY, data=c2, compression="gzip", compression_opts=4)
        paths.append(path)
    return paths


def read_c2(path: Path) -> np.ndarray:
    """The real I/O part of a load: read and decompress the matrix."""
    with h5py.File(path, "r") as handle:
        return handle[C2_KEY][()]


def preprocess(c2: np.ndarray, passes: int) -> np.ndarray:
    """Synthetic stand-in for data preparation: ``passes`` elementwise sweeps over ``c2``.

    Each pass symmetrises, clips outliers and renormalises, allocating like real code. It
    exists only to make a load take about as long as a fit; NumPy releases the GIL in it.
    """
    out = c2
    for _ in range(passes):
        out = 0.5 * (out + out.T)
        np.clip(out, 0.5, 2.0, out=out)
        out = out / out.mean()
    return out


def fit(c2: np.ndarray, products: int) -> dict[str, Any]:
    """Synthetic fit: ``products`` (FIT_BLOCK x FIT_BLOCK) matrix products seeded by ``c2``."""
    block = np.ascontiguousarray(c2[:FIT_BLOCK, :FIT_BLOCK])
    block = block / np.linalg.norm(block)
    state = np.eye(block.shape[0])
    for _ in range(products):
        state = block @ state
        state /= np.abs(state).max()
    residual = c2 - c2.mean()
    return {
        "chi2": float(np.sum(residual**2)),
        "trace": float(np.trace(state)),
        "c2_fit": c2 * 0.999,
    }


@dataclass
class Workload:
    """The calibrated amount of synthetic work per load and per fit."""

    read_s: float
    """Measured seconds of the real HDF5 read of one file."""
    passes: int
    """Synthetic preprocessing passes per load (``--load-kind cpu``)."""
    storage_wait_s: float
    """Simulated storage latency per load, seconds (``--load-kind storage``)."""
    products: int
    """Matrix products per fit."""

    def load(self, path: Path) -> np.ndarray:
        """One load: simulated storage wait, real read, then synthetic preprocessing."""
        if self.storage_wait_s > 0:
            time.sleep(self.storage_wait_s)
        return preprocess(read_c2(path), self.passes)

    def fit(self, c2: np.ndarray) -> dict[str, Any]:
        """One fit."""
        return fit(c2, self.products)


def _median_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(paths: list[Path], load_target: float, fit_target: float, load_kind: str) -> Workload:
    """Choose the load top-up and the fit's matrix products to reach the target seconds."""
    read_s = _median_time(lambda: read_c2(paths[0]))
    c2 = read_c2(paths[0])
    top_up = max(0.0, load_target - read_s)
    passes, storage_wait_s = 0, 0.0
    if load_kind == "cpu":
        pass_s = _median_time(lambda: preprocess(c2, 4)) / 4
        passes = round(top_up / pass_s)
    else:
        storage_wait_s = top_up
    fit(c2, 5)  # warm up BLAS
    product_s = _median_time(lambda: fit(c2, 20)) / 20
    products = max(1, round(fit_target / product_s))
    log.info(
        "calibration: read %.3f s, %d preprocessing passes, %.3f s storage wait, %d products of %.4f s",
        read_s,
        passes,
        storage_wait_s,
        products,
        product_s,
    )
    return Workload(read_s=read_s, passes=passes, storage_wait_s=storage_wait_s, products=products)


# -- the four ways to run the batch ----------------------------------------------------


@dataclass
class RunTimes:
    """What one run of the batch measured."""

    wall_s: float
    load_s: list[float] = field(default_factory=list)
    fit_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)


def _write_sync(out: Path, index: int, result: dict[str, Any]) -> None:
    """Write one data set's results on the calling thread."""
    folder = out / f"dataset_{index:03d}"
    atomic_write_json(folder / "result.json", {"chi2": result["chi2"], "trace": result["trace"]})
    atomic_write_hdf5(folder / "fit.h5", {"c2_fit": result["c2_fit"]})


def _write_async(writer: AsyncWriter, out: Path, index: int, result: dict[str, Any]) -> None:
    """Hand one data set's results to the background writer."""
    folder = out / f"dataset_{index:03d}"
    writer.submit_json(folder / "result.json", {"chi2": result["chi2"], "trace": result["trace"]})
    writer.submit_hdf5(folder / "fit.h5", {"c2_fit": result["c2_fit"]})


def run_batch(paths: list[Path], work: Workload, out: Path, *, prefetch: bool, async_write: bool) -> RunTimes:
    """Run the whole batch once; the wall time includes waiting for every write."""
    times = RunTimes(wall_s=0.0)
    writer = AsyncWriter(max_workers=2) if async_write else None
    start = time.perf_counter()
    loader = PrefetchLoader(paths, work.load, depth=1, strict=True) if prefetch else None
    if loader is not None:
        items = ((record.index, record.value, record.load_s) for record in loader)
    else:
        items = _serial_loads(paths, work)
    with contextlib.closing(loader) if loader is not None else contextlib.nullcontext():
        _fit_and_write(items, work, out, writer, times)
    if writer is not None:
        with writer:
            pass  # __exit__ waits for every write and raises WriteError on failure
    times.wall_s = time.perf_counter() - start
    return times


def _fit_and_write(
    items: Iterator[tuple[int, np.ndarray, float]],
    work: Workload,
    out: Path,
    writer: AsyncWriter | None,
    times: RunTimes,
) -> None:
    """The per-data-set loop: fit what was loaded, then write (or hand off) the results."""
    for index, c2, load_s in items:
        times.load_s.append(load_s)
        fit_start = time.perf_counter()
        result = work.fit(c2)
        times.fit_s.append(time.perf_counter() - fit_start)
        write_start = time.perf_counter()
        if writer is not None:
            _write_async(writer, out, index, result)
        else:
            _write_sync(out, index, result)
        times.write_s.append(time.perf_counter() - write_start)


def _serial_loads(paths: list[Path], work: Workload) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield (index, data, load seconds), loading each file only when asked for it."""
    for index, path in enumerate(paths):
        start = time.perf_counter()
        c2 = work.load(path)
        yield index, c2, time.perf_counter() - start


RUNS = {
    "serial_sync": (False, False),
    "serial_async": (False, True),
    "prefetch_sync": (True, False),
    "prefetch_async": (True, True),
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a summary, and write the JSON report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_io_", dir=args.workdir) as tmp:
        folder = Path(tmp)
        paths = write_datasets(folder, args.k, args.size)
        work = calibrate(paths, args.load_target, args.fit_target, args.load_kind)
        walls: dict[str, list[float]] = {name: [] for name in RUNS}
        serial_runs: list[RunTimes] = []
        for repeat in range(args.repeats):
            for name, (prefetch, async_write) in RUNS.items():
                out = folder / f"out_{name}_{repeat}"
                times = run_batch(paths, work, out, prefetch=prefetch, async_write=async_write)
                walls[name].append(times.wall_s)
                if name == "serial_sync":
                    serial_runs.append(times)
                log.info("repeat %d %-15s wall %.3f s", repeat, name, times.wall_s)

    load = statistics.median(statistics.fmean(run.load_s) for run in serial_runs)
    fit_s = statistics.median(statistics.fmean(run.fit_s) for run in serial_runs)
    write = statistics.median(statistics.fmean(run.write_s) for run in serial_runs)
    k = args.k
    wall = {name: statistics.median(values) for name, values in walls.items()}
    ideal = load + k * max(load, fit_s)
    ideal_sync_writes = load + k * max(load, fit_s + write)
    serial = k * (load + fit_s)
    report = {
        "K": k,
        "size": args.size,
        "repeats": args.repeats,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "load_kind": args.load_kind,
        "calibration": {
            "read_s": work.read_s,
            "preprocess_passes": work.passes,
            "storage_wait_s": work.storage_wait_s,
            "fit_products": work.products,
        },
        "mean_load_s": load,
        "mean_fit_s": fit_s,
        "mean_write_sync_s": write,
        "wall_s": wall,
        "wall_s_all_repeats": walls,
        "wall_no_prefetch_s": wall["serial_sync"],
        "wall_prefetch_s": wall["prefetch_async"],
        "ideal_s": ideal,
        "ideal_with_sync_writes_s": ideal_sync_writes,
        "serial_s": serial,
        "serial_with_writes_s": k * (load + fit_s + write),
        "ratio_prefetch_to_ideal": wall["prefetch_async"] / ideal,
        "ratio_prefetch_sync_to_its_ideal": wall["prefetch_sync"] / ideal_sync_writes,
        "ratio_best_prefetch_to_ideal": min(walls["prefetch_async"]) / ideal,
        "target_ratio": 1.10,
        "meets_target": wall["prefetch_async"] / ideal <= 1.10,
        "speedup": wall["serial_sync"] / wall["prefetch_async"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    print(
        f"K={k} n={args.size} load-kind={args.load_kind}: load {load:.3f} s, fit {fit_s:.3f} s, sync write {write:.3f} s\n"
        f"  wall serial+sync   {wall['serial_sync']:.3f} s   (K*(load+fit) = {serial:.3f} s)\n"
        f"  wall serial+async  {wall['serial_async']:.3f} s\n"
        f"  wall prefetch+sync {wall['prefetch_sync']:.3f} s   (its ideal {ideal_sync_writes:.3f} s)\n"
        f"  wall prefetch+async {wall['prefetch_async']:.3f} s  (ideal load+K*max = {ideal:.3f} s)\n"
        f"  ratio prefetch/ideal {report['ratio_prefetch_to_ideal']:.3f} (target <= 1.10), "
        f"speedup {report['speedup']:.2f}x; best repeat ratio {report['ratio_best_prefetch_to_ideal']:.3f}\n"
        f"  report: {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
