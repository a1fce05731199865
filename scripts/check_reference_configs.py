"""Check the configs of the reference ``homodyne`` package against homodyne_mpi.

Downloads the package's wheel with pip (version 2.23.3 and the latest 2.x; neither is
installed), takes every YAML file it ships and every config its generator
``homodyne-config`` writes (its own ``_filter_config`` run on each mode's template for
the filters full, minimal, nlsq_only and cmc_only, and the interactive builder's
additions), and for each one:

1. lists its key paths and fails on any that ``homodyne_mpi/config/reference_keys.yaml``
   does not classify;
2. ``homodyne-mpi validate`` with only the data file path changed, to a file simulated
   for the config's mode (its frame count, dt, and angles 0, 90 and 180 degrees);
3. ``homodyne-mpi run --method nlsq`` on the same config with a shorter frame window
   (``end_frame`` 100), to keep the run short; its result.json's convergence and reduced
   chi2 are printed.

Prints one line per config and a summary; exit code 1 when a key is unclassified or a
check fails. The wheels and configs stay in a temporary folder (they are another
project's files). Usage: ``python scripts/check_reference_configs.py [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

from homodyne_mpi.config import render_template
from homodyne_mpi.config.reference import classify, key_paths, reference_keys

VERSIONS = ("==2.23.3", "<3")
GENERATOR = "homodyne/cli/config_generator.py"
FILTERS = ("full", "minimal", "nlsq_only", "cmc_only")
BUILDER_KEYS = {"output_folder": "./results_builder", "sample_name": "sample", "experiment_id": "exp1"}
SHORT_END_FRAME = 100


def download(spec: str, folder: Path) -> Path:
    """The wheel of ``homodyne{spec}`` for Python 3.12 (the package needs it), via pip."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", f"homodyne{spec}", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "-d", str(folder), "-q"]  # fmt: skip
    subprocess.run(command, check=True)
    return sorted(folder.glob("homodyne-*.whl"))[-1]


def wheel_configs(wheel: Path) -> dict[str, Any]:
    """Every YAML file the wheel ships, and every config its generator writes, by name."""
    configs: dict[str, Any] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith((".yaml", ".yml")):
                configs[name] = yaml.safe_load(archive.read(name))
        source = archive.read(GENERATOR).decode()
    tree = ast.parse(source)
    namespace: dict[str, Any] = {"Any": Any}
    for node in tree.body:  # run the generator's own filter, not a copy of it
        if isinstance(node, ast.FunctionDef) and node.name == "_filter_config":
            exec(compile(ast.Module(body=[node], type_ignores=[]), GENERATOR, "exec"), namespace)  # noqa: S102
    template_map = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "template_map"
    )
    for mode, file_name in template_map.items():
        template = next(doc for name, doc in configs.items() if name.endswith("/" + file_name))
        for filter_mode in FILTERS:
            configs[f"generated {mode} --filter {filter_mode}"] = namespace["_filter_config"](
                copy.deepcopy(template), filter_mode
            )
        built = copy.deepcopy(template)
        built.setdefault("output", {}).update(BUILDER_KEYS)
        configs[f"generated {mode} --interactive"] = built
    return configs


def unclassified(config: Any) -> list[str]:
    """Key paths of ``config`` that the key table does not classify."""
    return sorted({path for path, _ in key_paths(config) if classify(path) is None})


def simulate(mode: str, folder: Path, end_frame: int, dt: float) -> Path:
    """A simulated data file of ``mode``: ``end_frame`` frames, angles 0, 90, 180 degrees."""
    path = folder / f"sim_{mode}_{end_frame}.h5"
    if path.exists():
        return path
    config = yaml.safe_load(render_template(mode))
    config["analyzer_parameters"].update(dt=dt, end_frame=end_frame)
    config["phi_filtering"]["enabled"] = False
    config_path = folder / f"sim_{mode}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli("simulate", str(config_path), "--output", str(path), "--phi", "0,90,180", "--noise", "0.001", check=True)
    return path


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """``homodyne-mpi ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "homodyne_mpi", *args], capture_output=True, text=True, check=check)


def check_config(name: str, config: Any, folder: Path) -> dict[str, Any]:
    """Validate ``config`` with a simulated data file, then a short NLSQ run."""
    mode = reference_keys()["mapped"]["analysis_mode"]["values"].get(config.get("analysis_mode"), config.get("analysis_mode"))
    analyzer = config.get("analyzer_parameters") or {}
    data = simulate(
        mode if mode in ("static", "laminar_flow") else "static",
        folder,
        int(analyzer.get("end_frame") or 200),
        float(analyzer.get("dt") or 0.001),
    )
    given = copy.deepcopy(config)
    given.setdefault("experimental_data", {})["file_path"] = str(data)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    path = folder / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(given, sort_keys=False))
    started = time.perf_counter()
    validate = cli("validate", str(path))
    row: dict[str, Any] = {"validate": validate.returncode, "message": _last_line(validate)}
    if validate.returncode == 0:
        short = copy.deepcopy(given)
        if isinstance(short.get("analyzer_parameters"), dict):
            short["analyzer_parameters"]["end_frame"] = SHORT_END_FRAME
        short_path = folder / f"{slug}_short.yaml"
        short_path.write_text(yaml.safe_dump(short, sort_keys=False))
        run = cli("run", str(short_path), "--method", "nlsq", "--output-dir", str(folder / f"out_{slug}"))
        row.update(run=run.returncode, message=_last_line(run) if run.returncode else "")
        for result in sorted((folder / f"out_{slug}").rglob("nlsq/result.json")):
            fit = json.loads(result.read_text())
            row.update(converged=fit["converged"], reduced_chi2=round(fit["reduced_chi2"], 3), n_points=fit["n_points"])
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="folder for the wheels, configs and runs (default: a temporary one)")
    parser.add_argument("--keys-only", action="store_true", help="only check that every key path is classified")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="homodyne_reference_"))
    configs: dict[str, Any] = {}
    for spec in VERSIONS:
        wheel = download(spec, folder / f"wheel{spec.strip('=<')}")
        version = wheel.name.split("-")[1]
        for name, config in wheel_configs(wheel).items():
            configs.setdefault(name, (version, config))
        print(f"{wheel.name}: {sum(1 for v, _ in configs.values() if v == version)} configs")
    failures = 0
    for name, (version, config) in configs.items():
        missing = unclassified(config)
        failures += bool(missing)
        row = {} if args.keys_only else check_config(name, config, folder)
        failed = row.get("validate", 0) != 0 or row.get("run", 0) != 0
        failures += failed
        status = "unclassified keys: " + ", ".join(missing) if missing else "FAIL" if failed else "ok"
        print(f"{version} {name}: {len({p for p, _ in key_paths(config)})} key paths; {status}; {row}")
    print(f"{len(configs)} configs checked, {failures} problem(s); files in {folder}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
