"""CMC with its default settings on hard simulated data: convergence and 90% coverage.

    mpiexec -n 2 python -m mpi4py scripts/bench_cmc_hard.py [--cases a,b] [--seeds 0-19]
                                                             [--output FILE]

Each case is simulated (Gaussian noise, per-angle contrast and offset), fitted by NLSQ
from the template's defaults with the frame-block jackknife, and sampled by CMC with the
template's ``optimization.cmc`` untouched (only the ``small_shards`` cases set
``sharding.num_shards``, to get shards of 400-600 points; ``static_small_data`` gets one such
shard from the default sharding, its data set being that small). Per seed it records every
shard's R-hat, divergence rate, retry and verdict, the data set's status, the NLSQ
correlation of D0 and D_offset, how many NLSQ standard errors D_offset lies from 0 and
phi0 from its nearest bound, and whether each physical parameter's q05..q95 holds the
truth, with the NLSQ value and std, the NLSQ profile half-widths (``nlsq.profile``) and
every shard's mean and median of each physical parameter (a skewed shard posterior biases
the consensus average). The JSON is rewritten after every seed, so a stopped run keeps
what it measured; ``--resume`` reads it back and runs only the (case, seed) pairs it lacks,
so the 6 x 20 figures can be gathered over several sittings, and ``--combine a.json,b.json``
(no sampling, no MPI needed) writes to ``--output`` the union of such files' runs, a later
file's (case, seed) replacing an earlier one's, with the summary of the whole. Runs go seed by seed through
all cases (seed 0 of every case, then seed 1, ...), so a stopped run has measured every
case. Each record names the commit that produced it. The CMC log (retries and why, shards
left out) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine  # noqa: E402

from homodyne_mpi.parallel.devices import configure_host_devices  # noqa: E402

configure_host_devices(4)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from homodyne_mpi.cmc import checkpoint, run_cmc  # noqa: E402
from homodyne_mpi.cmc.calibration import check_warm_start, likelihood_calibration  # noqa: E402
from homodyne_mpi.config import load_config, render_template  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.data.simulate import simulate_dataset  # noqa: E402
from homodyne_mpi.errors import FitError  # noqa: E402
from homodyne_mpi.nlsq import build_problem, fit_with_uncertainty  # noqa: E402
from homodyne_mpi.parallel import SerialComm, get_comm  # noqa: E402

STATIC = {"mode": "static", "phi": [0.0, 60.0, 120.0], "frames": 70, "q": 0.006, "noise": 0.01}
LAMINAR = {"mode": "laminar_flow", "frames": 50, "q": 0.01, "noise": 0.01}
"""Laminar cases: 3 angles, one of them perpendicular to the flow (``phi - phi0`` = 90 degrees, no
shear decorrelation there), as a flow experiment is laid out; without it (angles -30, 20, 70 at
``q`` 0.006) the shear decorrelates every angle before diffusion shows and the data do not
determine D0, alpha and D_offset at all (docs/cmc.md)."""
SHEAR = [2e-3, -0.3, 1e-4]
CASES = {
    "static_issue": {
        **STATIC,
        "physical": [1800.0, -0.35, 20.0],
        "num_shards": 4,
        "about": "issue 13's first data set: 3 angles, 70 frames, 4 shards of ~1,800 points",
    },
    "static_offset_zero": {
        **STATIC,
        "physical": [1800.0, -0.35, 0.0],
        "about": "D_offset at 0 (within 1 NLSQ std of 0), automatic shards",
    },
    "static_degenerate": {
        **STATIC,
        "physical": [1000.0, -0.05, 200.0],
        "about": "alpha near 0: a flat, curved D0/alpha/D_offset valley (flagged by the NLSQ profile check)",
    },
    "static_correlated": {
        **STATIC,
        "physical": [20000.0, -0.3, 5000.0],
        "about": "a large D_offset beside D0: |corr(D0, D_offset)| 0.994-0.996 at the NLSQ optimum",
    },
    "static_small_shards": {
        **STATIC,
        "phi": [0.0, 60.0],
        "frames": 60,
        "physical": [1800.0, -0.35, 20.0],
        "num_shards": 8,
        "about": "issue 13's second data set: 8 shards of 442 points",
    },
    "static_small_data": {
        **STATIC,
        "phi": [0.0, 60.0],
        "frames": 22,
        "dt": 0.3,
        "physical": [1800.0, -0.35, 20.0],
        "about": "a data set of 462 points (2 angles, 22 frames at dt 0.3: the lags of the 70-frame cases): "
        "one shard of 400-600 points from the default sharding",
    },
    "laminar_phi0_bound": {
        **LAMINAR,
        "phi": [-30.0, 20.0, 100.0],
        "physical": [1800.0, -0.35, 20.0, *SHEAR, 9.85],
        "about": "phi0 0.15 degrees from its upper bound 10",
    },
    "laminar_small_shear": {
        **LAMINAR,
        "phi": [-30.0, 20.0, 90.0],
        "physical": [1800.0, -0.35, 20.0, 2e-4, -0.3, 1e-5, 0.0],
        "about": "shear rate 2e-4 1/s: a small shear signal",
    },
}


def parse_seeds(text: str) -> list[int]:
    """``0-19`` or ``0,3,5``."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def build_case(case: dict, seed: int, folder: Path, combination: str | None = None):
    """Simulate, load, fit NLSQ with the jackknife (rank 0, one process)."""
    simulate_dataset(
        folder / "data.h5",
        mode=case["mode"],
        shear_form="paper",
        q=case["q"],
        dt=case.get("dt", 0.1),
        n_frames=case["frames"],
        gap=2e6,
        physical=case["physical"],
        contrast=np.linspace(0.28, 0.32, len(case["phi"])),
        offset=np.linspace(1.0, 1.02, len(case["phi"])),
        phi=case["phi"],
        noise_sigma=case["noise"],
        seed=seed,
    )
    config = yaml.safe_load(render_template(case["mode"]))
    config["analyzer_parameters"].update({"dt": case.get("dt", 0.1), "end_frame": case["frames"]})
    config["analyzer_parameters"]["scattering"]["wavevector_q"] = case["q"]
    config["phi_filtering"]["enabled"] = False
    config["experimental_data"]["file_path"] = str(folder / "data.h5")
    config["compute"]["compilation_cache_dir"] = str(folder.parent / "jax_cache")
    config["optimization"]["method"] = "both"
    config["optimization"]["nlsq"]["profile_check"] = True  # flags flat valleys; CMC starts chains at their ends
    if "num_shards" in case:
        config["optimization"]["cmc"]["sharding"]["num_shards"] = case["num_shards"]
    if combination is not None:
        config["optimization"]["cmc"]["combination"]["method"] = combination
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(folder / "config.yaml")
    data = load_config_dataset(cfg)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    nlsq = fit_with_uncertainty(problem, points, SerialComm(), cfg.optimization.nlsq)
    return cfg, problem, points, nlsq


def geometry(problem, nlsq) -> dict:
    """The NLSQ facts that make a case hard."""
    names = list(problem.names)
    std = np.asarray(nlsq.std)
    corr = np.asarray(nlsq.covariance) / np.outer(std, std)
    d0, dof = names.index("D0"), names.index("D_offset")
    out = {
        "corr_D0_D_offset": float(corr[d0, dof]),
        "D_offset_over_std": float(nlsq.theta[dof] / std[dof]),
        "nlsq_converged": bool(nlsq.converged),
    }
    if "phi0" in names:
        k = names.index("phi0")
        out["phi0_std_from_bound"] = float(min(nlsq.theta[k] - problem.lower[k], problem.upper[k] - nlsq.theta[k]) / std[k])
    return out


def physical_index(problem) -> dict[str, int]:
    """Position of each physical parameter in the parameter vector."""
    return {p: list(problem.names).index(p) for p in problem.layout.physical_names}


def shard_checkpoints(folder: Path) -> list[dict[str, np.ndarray]]:
    """Each checkpointed shard's ``draws`` and ``num_steps`` (its last attempt), read once, in shard order."""
    shards = []
    for path in sorted(checkpoint.shard_folder(folder).glob("*.npz")):
        with np.load(path) as saved:
            shards.append({name: saved[name] for name in ("draws", "num_steps") if name in saved.files})
    return shards


def shard_mean_median(shards: list[dict[str, np.ndarray]], problem) -> dict[str, list[list[float]]]:
    """Per physical parameter, ``[mean, median]`` of each shard's draws (``shard_checkpoints``): a mean
    far from its median marks a skewed shard posterior, which biases the consensus average."""
    sampled = [int(k) for k in np.flatnonzero(problem.free)]  # the draws' columns, then sigma
    out: dict[str, list[list[float]]] = {p: [] for p in problem.layout.physical_names}
    for shard in shards:
        draws = shard["draws"].reshape(-1, shard["draws"].shape[-1])
        for p, k in physical_index(problem).items():
            if k in sampled:
                column = draws[:, sampled.index(k)]
                out[p].append([float(column.mean()), float(np.median(column))])
    return out


def shard_leapfrog_steps(shards: list[dict[str, np.ndarray]]) -> list[float]:
    """Median leapfrog steps per draw of each shard (``shard_checkpoints``): the cost of a draw in
    gradient evaluations, large where the posterior is broad and curved."""
    return [float(np.median(shard["num_steps"])) if "num_steps" in shard else float("nan") for shard in shards]


def commit() -> str:
    """The repository's HEAD (``unknown`` outside a git checkout), with ``+dirty`` for local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


COMMIT = commit()
"""The code this process runs (read once at start: later commits do not change it)."""


def run_seed(comm, name: str, case: dict, seed: int, workdir: Path, combination: str | None = None) -> dict | None:
    """One (case, seed) on every rank; rank 0 returns its record."""
    folder = workdir / f"{name}_{seed}"
    built = None
    if comm.is_root:
        folder.mkdir(parents=True, exist_ok=True)
        cfg, problem, points, nlsq = build_case(case, seed, folder, combination)
        check_warm_start(nlsq)
        built = (cfg, problem, points, nlsq, likelihood_calibration(nlsq, problem))
    cfg, problem, _, _, calibration = comm.bcast(None if built is None else (built[0], built[1], None, None, built[4]))
    record = None
    start = time.perf_counter()
    try:
        result = run_cmc(
            cfg,
            problem,
            built[2] if built else None,
            comm,
            warm_start=built[3] if built else None,
            output_dir=folder if comm.is_root else None,
            calibration=calibration,
        )
        document = result.to_json_dict() if comm.is_root else None
    except FitError as error:
        document = {"status": "failed", "reason": str(error)}
        if comm.is_root:
            document = json.loads((folder / "cmc" / "result.json").read_text())
    if comm.is_root:
        truth = case["physical"]
        physical = list(problem.layout.physical_names)
        params = document.get("parameters", {})
        covered = {p: bool(params[p]["q05"] <= t <= params[p]["q95"]) for p, t in zip(physical, truth)} if params else {}
        shards = [
            {
                k: s[k]
                for k in (
                    "index",
                    "n_points",
                    "rhat_max",
                    "divergence_rate",
                    "ok",
                    "retried_because",
                    "excluded_reason",
                    "num_warmup",
                    "extended_to",
                )
                if k in s
            }
            for s in document["shards"]
        ]
        shards_saved = shard_checkpoints(folder)
        record = {
            "case": name,
            "commit": COMMIT,
            "combination": cfg.optimization.cmc.combination.method,
            "nlsq": {p: [float(built[3].theta[k]), float(built[3].std[k])] for p, k in physical_index(problem).items()},
            "profile_half_widths": {p: [s.half_width for s in sides] for p, sides in built[3].profile.items()},
            "shard_mean_median": shard_mean_median(shards_saved, problem),
            "shard_median_leapfrog_steps": shard_leapfrog_steps(shards_saved),
            "seed": seed,
            "status": document["status"],
            "reason": document.get("reason"),
            "calibration": calibration,
            "covered": covered,
            "seconds": time.perf_counter() - start,
            "shards": shards,
            **geometry(problem, built[3]),
        }
    return record


def summarise(records: list[dict]) -> dict:
    """Per case: the done-when figures over the seeds run."""
    out = {}
    for name in sorted({r["case"] for r in records}):
        mine = [r for r in records if r["case"] == name]
        kept = [s for r in mine for s in r["shards"] if s["ok"]]
        every = [s for r in mine for s in r["shards"] if s["divergence_rate"] is not None]
        pairs = [c for r in mine for c in r["covered"].values()]
        out[name] = {
            "seeds": len(mine),
            "failed_datasets": sum(r["status"] == "failed" for r in mine),
            "shards": len(every),
            "shards_left_out": sum(not s["ok"] for r in mine for s in r["shards"]),
            "shards_retried": sum(s["retried_because"] is not None for s in every),
            "shards_extended": sum(bool(s.get("extended_to")) for s in every),
            "max_rhat_retained": max((s["rhat_max"] for s in kept), default=None),
            "max_divergence_rate": max((s["divergence_rate"] for s in every), default=None),
            "coverage_90": float(np.mean(pairs)) if pairs else None,
            "coverage_pairs": len(pairs),
            "median_abs_corr_D0_D_offset": float(np.median([abs(r["corr_D0_D_offset"]) for r in mine])),
            "median_abs_D_offset_over_std": float(np.median([abs(r["D_offset_over_std"]) for r in mine])),
            "median_phi0_std_from_bound": (
                float(np.median([r["phi0_std_from_bound"] for r in mine])) if "phi0_std_from_bound" in mine[0] else None
            ),
            "median_seconds": float(np.median([r["seconds"] for r in mine])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated from {', '.join(CASES)}")
    parser.add_argument("--seeds", default="0-19", help="0-19 or 0,3,5")
    parser.add_argument("--output", default="bench_results/bench_cmc_hard.json")
    parser.add_argument("--combination", default=None, help="optimization.cmc.combination.method (default: the template's)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --output and skip their (case, seed)")
    parser.add_argument(
        "--combine",
        default=None,
        help="a,b,...: no sampling; write to --output the runs of these JSON files (a later file's (case, seed) replaces an "
        "earlier one's) with their summary",
    )
    args = parser.parse_args()
    if args.combine:
        combine_documents(args.combine.split(","), args.output)
        return
    comm = get_comm()
    # the CMC log (retries and their reasons, shards left out) on stderr, one prefix per rank
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {comm.rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("homodyne_mpi.cmc").setLevel(logging.INFO)
    names = [c.strip() for c in args.cases.split(",")]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    records, start = [], time.perf_counter()
    if args.resume and Path(args.output).exists():
        records = json.loads(Path(args.output).read_text())["runs"]
    done = {(r["case"], r["seed"]) for r in records}
    with tempfile.TemporaryDirectory() as folder:
        for seed in parse_seeds(args.seeds):
            for name in names:
                if (name, seed) in done:
                    continue
                record = run_seed(comm, name, CASES[name], seed, Path(folder), args.combination)
                # every data set compiles its own kernels; kept alive, their memory maps reach the
                # kernel's limit after about an hour ("LLVM compilation error: Cannot allocate memory")
                jax.clear_caches()
                if comm.is_root:
                    records.append(record)
                    print(
                        f"{name} seed {seed}: {record['status']}, covered {record['covered']}, "
                        f"R-hat max {max((s['rhat_max'] or 0) for s in record['shards']):.3f}, "
                        f"divergences max {max((s['divergence_rate'] or 0) for s in record['shards']):.3f}, "
                        f"{record['seconds']:.0f} s",
                        flush=True,
                    )
                    write_document(args.output, comm, names, records, start)


def combine_documents(paths: list[str], output: str) -> None:
    """One document from several runs' JSON: every (case, seed) record, a later file's replacing an earlier's."""
    by_pair: dict[tuple[str, int], dict] = {}
    sources = {}
    for path in paths:
        for record in json.loads(Path(path).read_text())["runs"]:
            by_pair[(record["case"], record["seed"])] = record
            sources[(record["case"], record["seed"])] = path
    records = [by_pair[pair] for pair in sorted(by_pair)]
    document = {
        "benchmark": "CMC default settings on hard simulated cases",
        "command": " ".join(["python", *sys.argv]),
        "sources": {path: sum(source == path for source in sources.values()) for path in paths},
        "summary": summarise(records),
        "runs": records,
    }
    Path(output).write_text(json.dumps(document, indent=2))
    print(json.dumps(document["summary"], indent=2))


def write_document(path, comm, names, records, start) -> None:
    """The JSON of the seeds finished so far."""
    document = {
        "benchmark": "CMC default settings on hard simulated cases",
        "command": " ".join(["mpiexec -n", str(comm.size), "python -m mpi4py", *sys.argv]),
        "ranks": comm.size,
        "machine": machine(),
        "seconds": time.perf_counter() - start,
        "cases": {n: CASES[n] for n in sorted({r["case"] for r in records} | set(names))},
        "summary": summarise(records),
        "runs": records,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
