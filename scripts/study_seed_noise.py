"""How much the simulator's noise draws of given seeds move the static parameters (the linear control's reference).

Usage: python scripts/study_seed_noise.py [--seeds 1000] [--group 200] [--output FILE]

The static case of ``scripts/bench_uncertainty.py`` (6 angles, 100 frames, sigma 0.01, truth
D0 8000, alpha -0.3, D_offset 30, contrast 0.3, offset 1). Independently of the NLSQ kernels,
the Jacobian of ``model.c2_points`` at the truth comes from ``jax.jacfwd`` and the linearised
least-squares estimator is ``P = (J^T J)^-1 J^T``, with std ``0.01 sqrt(diag (J^T J)^-1)``.
Each seed's noise is drawn as the simulator draws it (checked against a simulated file for one
seed: the generator ``default_rng([seed, 0, angle])``, one ``N x N`` standard normal block per
angle, its strict upper triangle used); the *seed factor* of a set of seeds is the standard
deviation of ``P e`` over them divided by that std (1 on average; an exactly calibrated error
bar has the scatter ratio ``1 / factor`` on those seeds). Reported per group of ``--group``
seeds, over all seeds, and for white noise of another generator (2,000 draws).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import machine, write_json  # noqa: E402
from bench_uncertainty import PHI, TRUTH, simulate, write_config  # noqa: E402

from homodyne_mpi.parallel.devices import configure_host_devices  # noqa: E402

configure_host_devices(1)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from homodyne_mpi.config import load_config  # noqa: E402
from homodyne_mpi.data.loader import load_config_dataset  # noqa: E402
from homodyne_mpi.data.points import upper_triangle_points  # noqa: E402
from homodyne_mpi.data.simulate import simulate_dataset  # noqa: E402
from homodyne_mpi.model import c2_points  # noqa: E402
from homodyne_mpi.nlsq import build_problem  # noqa: E402

N_FRAMES, SIGMA = 100, 0.01
NAMES = ("D0", "alpha", "D_offset")


def seed_noise(seed: int, n_angles: int) -> np.ndarray:
    """The simulator's point noise of ``seed`` (q index 0), in the order of ``upper_triangle_points``."""
    upper = np.triu_indices(N_FRAMES, 1)
    return np.concatenate(
        [SIGMA * np.random.default_rng([seed, 0, a]).standard_normal((N_FRAMES, N_FRAMES))[upper] for a in range(n_angles)]
    )


def exact_data(workdir: Path, truth: np.ndarray) -> None:
    """Write ``workdir/data.h5`` as ``bench_uncertainty.simulate`` does, without noise."""
    simulate_dataset(
        workdir / "data.h5", mode="static", shear_form="paper", q=0.0054, dt=0.1, n_frames=N_FRAMES, gap=2e6,
        physical=truth, contrast=0.3, offset=1.0, phi=PHI, noise_sigma=0.0, seed=0,
    )  # fmt: skip


def linear_estimator(points, phi, spec, truth: np.ndarray, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P, sd)`` of the physical parameters: rows of ``(J^T J)^-1 J^T`` and the linearised std at the
    truth, ``J`` by ``jax.jacfwd`` of ``model.c2_points`` (contrast 0.3, offset 1)."""

    def model(vector):
        contrast, offset, physical = vector[:n_angles], vector[n_angles : 2 * n_angles], vector[2 * n_angles :]
        return c2_points(physical, contrast, offset, phi, points.angle, points.frame_i, points.frame_j, spec)

    start = jnp.concatenate([jnp.full(n_angles, 0.3), jnp.full(n_angles, 1.0), jnp.asarray(truth)])
    jacobian = np.asarray(jax.jacfwd(model)(start))
    gram = jacobian.T @ jacobian
    physical = slice(2 * n_angles, None)
    return np.linalg.solve(gram, jacobian.T)[physical], SIGMA * np.sqrt(np.diag(np.linalg.inv(gram)))[physical]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--group", type=int, default=200)
    parser.add_argument("--output", default="bench_results/study_seed_noise.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="seed_noise_"))
    truth, n_angles = np.array(TRUTH["static"]), len(PHI)
    sigmas = np.full(n_angles, SIGMA)
    cfg = load_config(write_config("static", N_FRAMES, 20, workdir))
    simulate(workdir, "static", truth, PHI, N_FRAMES, 0, "gaussian")
    noisy = upper_triangle_points(load_config_dataset(cfg).c2, sigmas)
    exact_data(workdir, truth)
    data = load_config_dataset(cfg)
    exact = upper_triangle_points(data.c2, sigmas)
    drawn_check = float(np.max(np.abs((noisy.value - exact.value) - seed_noise(0, n_angles))))
    if drawn_check > 1e-12:
        raise SystemExit(f"the simulator's noise is not the generator drawn here (largest difference {drawn_check:g})")
    spec = build_problem(cfg, data).spec
    estimator, sd = linear_estimator(exact, jnp.asarray(data.phi), spec, truth, n_angles)
    deviations = np.array([estimator @ seed_noise(seed, n_angles) for seed in range(args.seeds)])
    white_rng = np.random.default_rng(99)
    white = np.array([estimator @ (SIGMA * white_rng.standard_normal(len(exact))) for _ in range(2000)])

    def factor(rows: np.ndarray) -> dict:
        return dict(zip(NAMES, (rows.std(axis=0, ddof=1) / sd).round(3).tolist()))

    groups = {
        f"{lo}-{min(lo + args.group, args.seeds) - 1}": factor(deviations[lo : lo + args.group])
        for lo in range(0, args.seeds, args.group)
    }
    document = {
        "benchmark": "seed noise factors",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "linearised_std": dict(zip(NAMES, sd.tolist())),
        "simulator_noise_check": drawn_check,
        "seed_factor_first_20": factor(deviations[:20]),
        "seed_factor_first_60": factor(deviations[:60]),
        "seed_factor_groups": groups,
        "seed_factor_all": factor(deviations),
        "white_noise_factor_2000_draws": factor(white),
    }
    for key, value in document.items():
        if key not in ("benchmark", "command", "machine"):
            print(key, value)
    write_json(args.output, document)


if __name__ == "__main__":
    main()
