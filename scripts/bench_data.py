"""Simulated data sets and their configs, shared by the scale benchmarks.

Used by ``bench_scale.py``, ``bench_batch.py``, ``bench_fixed_costs.py`` and
``bench_cost_model.py``: q = 0.0054 1/A, dt = 0.1 s, gap 2e6 A, contrast 0.3, offset 1,
Gaussian noise sigma 0.02, template starting values, angle filtering and plots off,
the compilation cache in the work folder.
"""

from __future__ import annotations

from pathlib import Path

TRUTH = {"static": [8000.0, -0.3, 30.0], "laminar_flow": [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]}
"""Physical parameters of the simulated data, canonical order."""
PHI = [-60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
"""Angles of the simulated data unless a benchmark gives others, degrees."""


def simulated_file(path: Path, mode: str, n_frames: int, phi=PHI, seed: int = 1) -> Path:
    """Write the data set to ``path`` unless it exists (the simulation is seeded, so reuse is safe)."""
    from homodyne_mpi.data.simulate import simulate_dataset

    if not path.exists():
        simulate_dataset(path, mode=mode, shear_form="paper", q=0.0054, dt=0.1, n_frames=n_frames, gap=2e6,
                         physical=TRUTH[mode], contrast=0.3, offset=1.0, phi=list(phi), noise_sigma=0.02, seed=seed)  # fmt: skip
    return path


def bench_config(path: Path, mode: str, n_frames: int, datasets, *, uncertainty: str = "model") -> Path:
    """Write a config for ``datasets`` (one file, or a list of ``{"file_path", "name"}``) to ``path``."""
    import yaml

    from homodyne_mpi.config import render_template

    config = yaml.safe_load(render_template(mode))
    config["analyzer_parameters"].update({"dt": 0.1, "end_frame": n_frames})
    if isinstance(datasets, list):
        config["experimental_data"]["file_path"] = None
        config["experimental_data"]["datasets"] = datasets
    else:
        config["experimental_data"]["file_path"] = str(datasets)
    config["phi_filtering"]["enabled"] = False
    config["compute"]["compilation_cache_dir"] = str(path.parent / "jax_cache")
    config["optimization"]["nlsq"]["uncertainty"] = uncertainty
    config["output"]["plots"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_mpi(ranks: int, arguments: list[str]) -> tuple[float, str]:
    """``mpiexec -n ranks python ARGUMENTS`` with one XLA thread per rank; ``(wall seconds, stdout)``.

    Raises ``RuntimeError`` with the end of stderr when the command fails.
    """
    import subprocess
    import sys
    import time

    from bench_common import single_core_environment

    command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, *arguments]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=single_core_environment())
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    return wall, completed.stdout
