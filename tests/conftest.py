"""Test set-up shared by the serial and the MPI runs.

The host-device count must be set before JAX is imported anywhere, so it happens here,
first. Under ``mpiexec -n N python -m mpi4py -m pytest --with-mpi`` a failed test on one
rank aborts the whole job instead of leaving the other ranks waiting in a collective.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from homodyne_mpi.parallel.devices import configure_host_devices

configure_host_devices(4)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _mpi_size() -> int:
    if "mpi4py.MPI" not in sys.modules:
        return 1
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _mpi_size() > 1:
        from mpi4py import MPI

        sys.stderr.write(f"\n[rank {MPI.COMM_WORLD.Get_rank()}] {item.nodeid} failed:\n{report.longreprtext}\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def venv_bin(name: str) -> str:
    """Path of a console script installed beside the running Python (the venv's)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH")
    return found


def run_cli(*args: str, ranks: int = 0, timeout: float = 600, cwd: str | Path | None = None, env: dict | None = None):
    """Run ``homodyne-mpi ARGS`` (under ``mpiexec -n ranks`` when ranks > 0)."""
    command = [sys.executable, "-m", "homodyne_mpi", *args]
    if ranks > 0:
        command = [venv_bin("mpiexec"), "-n", str(ranks), *command]
    full_env = dict(os.environ)
    full_env.pop("PMI_SIZE", None)
    full_env.pop("OMPI_COMM_WORLD_SIZE", None)
    full_env.pop("PMIX_SIZE", None)
    if env:
        full_env.update(env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env)


@pytest.fixture
def cli():
    """The ``run_cli`` helper as a fixture."""
    return run_cli


def template_config(mode: str, **changes) -> dict:
    """The ``init-config`` template of ``mode`` as a dict, with dotted-key changes applied.

    Angle filtering and the compilation cache are off, and NLSQ reports the model
    uncertainty (fast); pass ``**{"optimization.nlsq.uncertainty": "jackknife"}`` to test
    the jackknife.

    Example: ``template_config("static", **{"analyzer_parameters.dt": 0.1})``.
    """
    import yaml

    from homodyne_mpi.config import render_template

    config = yaml.safe_load(render_template(mode))
    config["phi_filtering"]["enabled"] = False
    config["compute"]["compilation_cache_dir"] = None
    config["optimization"]["nlsq"]["uncertainty"] = "model"  # the jackknife has its own tests
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def write_config(path: Path, mode: str, **changes) -> Path:
    """Write ``template_config(mode, **changes)`` as YAML to ``path``."""
    import yaml

    path.write_text(yaml.safe_dump(template_config(mode, **changes), sort_keys=False))
    return path
