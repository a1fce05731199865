"""Forward-model throughput: c2 on a 20 x 1000 x 1000 grid, points per second per core.

Usage: python scripts/bench_forward.py [--angles 20] [--frames 1000] [--output FILE]

Runs with XLA held to one thread (set before JAX is imported), so the rates are per core.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import SINGLE_CORE_XLA_FLAGS, best_of, machine, write_json  # noqa: E402

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_CORE_XLA_FLAGS}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from homodyne_mpi.model import ModelSpec, c2_grid, c2_points  # noqa: E402

PHYSICAL = {
    "static": [10000.0, -0.5, 5.0],
    "laminar_flow": [10000.0, -0.5, 5.0, 1e-4, 0.2, 1e-5, 4.0],
}


def measure(mode: str, n_angles: int, n_frames: int) -> dict:
    spec = ModelSpec(mode, "paper", q=0.0054, dt=0.1, n_frames=n_frames, gap=2e6)
    physical = jnp.asarray(PHYSICAL[mode])
    contrast = jnp.full(n_angles, 0.3)
    offset = jnp.ones(n_angles)
    phi = jnp.linspace(-90.0, 90.0, n_angles)
    grid = jax.jit(c2_grid, static_argnames="spec")
    jax.block_until_ready(grid(physical, contrast, offset, phi, spec=spec))
    grid_seconds = best_of(lambda: jax.block_until_ready(grid(physical, contrast, offset, phi, spec=spec)))
    n_grid = n_angles * n_frames * n_frames
    rng = np.random.default_rng(0)
    n_points = 4_000_000
    angle = jnp.asarray(rng.integers(0, n_angles, n_points), dtype=jnp.int32)
    i = jnp.asarray(rng.integers(0, n_frames, n_points), dtype=jnp.int32)
    j = jnp.asarray(rng.integers(0, n_frames, n_points), dtype=jnp.int32)
    points = jax.jit(c2_points, static_argnames="spec")
    jax.block_until_ready(points(physical, contrast, offset, phi, angle, i, j, spec=spec))
    point_seconds = best_of(lambda: jax.block_until_ready(points(physical, contrast, offset, phi, angle, i, j, spec=spec)))
    return {
        "grid_points": n_grid,
        "grid_seconds": grid_seconds,
        "grid_points_per_second_per_core": n_grid / grid_seconds,
        "point_list_points": n_points,
        "point_list_seconds": point_seconds,
        "point_list_points_per_second_per_core": n_points / point_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--angles", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--output", default="bench_results/bench_forward.json")
    args = parser.parse_args()
    document = {
        "benchmark": "forward model c2, one core (XLA single-threaded), float64, shear_form paper",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "grid": [args.angles, args.frames, args.frames],
        "static": measure("static", args.angles, args.frames),
        "laminar_flow": measure("laminar_flow", args.angles, args.frames),
    }
    write_json(args.output, document)


if __name__ == "__main__":
    main()
