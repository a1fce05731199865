"""Configs in the reference package's format, built from the committed key table.

The table (homodyne_mpi/config/reference_keys.yaml) lists every key path of the
reference package's configs. Each test config here uses every key of the table
(section-level rules aside), so a key that stops being read, mapped or ignored fails.
"""

from __future__ import annotations

import copy
import json
import logging
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from homodyne_mpi.config import HomodyneConfig, render_template
from homodyne_mpi.config.reference import classify, reference_keys
from homodyne_mpi.errors import ConfigError

TABLE = reference_keys()
PHI = [0.0, 90.0, 180.0]


def schema_paths(cls: type, prefix: str = "") -> set[str]:
    """Every key path of the schema, list entries written ``[]``."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        out.add(path)
        tp = hints[f.name]
        items = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is list]
        if is_dataclass(tp):
            out |= schema_paths(tp, path)
        elif items and is_dataclass(typing.get_args(items[0])[0]):
            out |= schema_paths(typing.get_args(items[0])[0], path + "[]")
    return out


def get(d, path):
    for key in path.split("."):
        d = d[key]
    return d


def put(d, path, value):
    *parents, leaf = path.split(".")
    for key in parents:
        d = d.setdefault(key, {})
    d[leaf] = value


def is_leaf(path: str, every: set[str]) -> bool:
    return not any(other.startswith((path + ".", path + "[]")) for other in every)


def changed(value):
    """A valid value of the same field that differs from ``value`` (a default)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.05
    if isinstance(value, str):
        return {"stratified": "random", "barycenter": "consensus_mc"}.get(value, "./from_reference")
    return 3600.0


def reference_config(mode: str, data_file: str) -> tuple[dict, dict[str, object], list[str]]:
    """A config that uses every key of the table; the values the mapped keys must give
    here, and the mapped keys that must be listed as ignored (their target was set)."""
    template = yaml.safe_load(render_template(mode))
    every = set(TABLE["same"]) | set(TABLE["mapped"]) | set(TABLE["refused"]) | set(TABLE["ignored"])
    config: dict = {}
    for path in TABLE["same"]:
        if "[]" not in path and is_leaf(path.split("[]")[0], {p for p in every if "[]" not in p}):
            put(config, path, copy.deepcopy(get(template, path)))
    for path in ("phi_filtering.target_ranges", "parameter_space.bounds"):
        put(config, path, copy.deepcopy(get(template, path)))
    config["analyzer_parameters"].update(dt=0.1, start_frame=1, end_frame=16)
    config["analysis_mode"] = "static_isotropic" if mode == "static" else mode
    config["experimental_data"]["file_path"] = data_file
    config["optimization"]["nlsq"].update(max_iterations=10, uncertainty="model")  # own keys, for speed
    config["compute"] = {"compilation_cache_dir": None}
    for path, entry in TABLE["refused"].items():
        put(config, path, entry["unless"])
    for path in TABLE["ignored"]:
        if "[]" in path:
            parent, leaf = path.split("[].")
            for item in get(config, parent):
                item[leaf] = "x"
        elif is_leaf(path, every):
            put(config, path, "x")
    present = {path for path in TABLE["same"] if "[]" not in path}
    for path, entry in TABLE["mapped"].items():
        if entry.get("to") == path:  # this program's key, reference values renamed
            put(config, path, copy.deepcopy(get(template, path)))
            present.add(path)
    expected: dict[str, object] = {}
    shadowed: list[str] = []
    for path, entry in TABLE["mapped"].items():
        target = entry.get("to")
        if entry.get("merge") or target is None or target == path:
            continue
        if target in expected or target in present:
            put(config, path, changed(get(template, target)))
            shadowed.append(path)
        else:
            default = get(template, target)
            value = 0.9 if target.endswith("min_success_rate") else changed(default)
            put(config, path, value)
            expected[target] = value
    for path in TABLE["mapped"]:
        if classify(path) == "mapped" and TABLE["mapped"][path].get("by") == "per_angle_mode":
            put(config, path, "auto")
    put(config, "optimization.cmc.combination.method", "weighted_gaussian")
    put(config, "analysis_settings.static_mode", mode == "static")
    put(config, "experimental_data.data_file_name", "not_read.hdf")  # file_path is given
    return config, expected, shadowed


def test_key_table_is_consistent():
    ours = schema_paths(HomodyneConfig)
    kinds = ("same", "mapped", "refused", "ignored")
    listed = [path for kind in kinds for path in TABLE[kind]]
    assert len(listed) == len(set(listed))  # each path classified once
    assert set(TABLE["same"]) <= ours
    for path, entry in TABLE["mapped"].items():
        assert "to" in entry or "by" in entry, path
        if "to" in entry:  # a key here, or a reference section that the table reads on
            assert entry["to"] in ours or classify(entry["to"]) is not None, (path, entry["to"])
    assert not set(TABLE["ignored"]) & ours


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
def test_reference_format_config_from_the_table(mode, tmp_path: Path, caplog):
    from homodyne_mpi.data.simulate_config import simulate_from_config

    data = tmp_path / "data.h5"
    config, expected, shadowed = reference_config(mode, str(data))
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.config"):
        cfg = HomodyneConfig.from_dict(config, source="reference.yaml")
    assert cfg.analysis_mode == mode
    plain = cfg.to_dict()
    for target, value in expected.items():
        assert get(plain, target) == pytest.approx(value), target
    assert set(shadowed) <= set(cfg.ignored_keys)
    assert cfg.optimization.cmc.combination.method == "gaussian_product"
    assert cfg.initial_parameters.per_angle_scaling.mode == "individual"
    # every key without an equivalent is listed (itself or a section above it), in one log line
    for path in TABLE["ignored"]:
        assert any(path == key or path.startswith(key + ".") for key in cfg.ignored_keys), path
    assert len([r for r in caplog.records if "ignoring" in r.getMessage()]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the same config, as a file, loads its data and runs a short NLSQ fit
    simulate_from_config(cfg, data, phi=PHI, noise=0.001, seed=1)
    path = tmp_path / "reference.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("run", str(path), "--method", "nlsq", "--output-dir", str(tmp_path / "out"), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    fit = json.loads(next((tmp_path / "out").rglob("result.json")).read_text())
    assert fit["analysis_mode"] == mode and fit["n_points"] == 3 * 16 * 15 // 2


@pytest.mark.parametrize(
    ("path", "value"),
    [(path, value) for path, entry in TABLE["mapped"].items() for value in entry.get("refuse", {})]
    + [(path, not entry["unless"]) for path, entry in TABLE["refused"].items()],
)
def test_values_without_equivalent_are_refused(path, value, tmp_path: Path):
    config, _, _ = reference_config("static", str(tmp_path / "data.h5"))
    put(config, path, value)
    with pytest.raises(ConfigError) as info:
        HomodyneConfig.from_dict(config, source="reference.yaml")
    message = str(info.value)
    assert "\n" not in message and f"'{path}'" in message and " -- " in message


def test_minimal_reference_config_takes_q_from_the_file(tmp_path: Path):
    """The reference generator's ``--filter minimal`` keeps only the mode, the data and the
    method: q then comes from the data file (its first stored q), as in the reference."""
    from homodyne_mpi.data.simulate_config import simulate_from_config

    data = tmp_path / "data.h5"
    own = HomodyneConfig.from_dict(
        {
            "analysis_mode": "static",
            "analyzer_parameters": {"dt": 0.1, "end_frame": 12, "scattering": {"wavevector_q": 0.0071}},
            "initial_parameters": {"values": [1000.0, 0.0, 0.0]},
        }
    )
    simulate_from_config(own, data, phi=PHI)
    minimal = {"metadata": {"config_version": "x"}, "analysis_mode": "static",
               "experimental_data": {"file_path": str(data)}, "optimization": {"method": "nlsq"}}  # fmt: skip
    assert HomodyneConfig.from_dict(minimal).analyzer_parameters.scattering.wavevector_q is None
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(minimal))
    result = run_cli("validate", str(path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "q = 0.0071 1/A" in result.stdout
    # this program's own format still needs the key
    with pytest.raises(ConfigError, match="missing key 'analyzer_parameters.scattering.wavevector_q'"):
        HomodyneConfig.from_dict({"analysis_mode": "static", "experimental_data": {"file_path": str(data)}})
