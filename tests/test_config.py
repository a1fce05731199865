"""Typed configuration: templates, round trips, reference-package configs, errors."""

from __future__ import annotations

import copy
import logging
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from homodyne_mpi.config import (
    DEFAULT_BOUNDS,
    PHYSICAL_PARAMETERS,
    DatasetConfig,
    ExperimentalDataConfig,
    HomodyneConfig,
    dump_config,
    load_config,
    render_template,
)
from homodyne_mpi.config.template import example_config, field_docs
from homodyne_mpi.errors import ConfigError

DATA = Path(__file__).parent / "data"
MODES = ("static", "laminar_flow")


def template_dict(mode: str) -> dict:
    return yaml.safe_load(render_template(mode))


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "config.yaml") + ": ")
    assert " -- " in message
    return message


def dict_error(d: dict) -> str:
    with pytest.raises(ConfigError) as info:
        HomodyneConfig.from_dict(d, source="config.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config.yaml: ")
    assert " -- " in message
    return message


def with_key(d: dict, dotted: str, value) -> dict:
    """Deep copy of ``d`` with ``dotted`` (a.b.c) set to ``value``."""
    out = copy.deepcopy(d)
    node = out
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every serialised key of a config dataclass."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        args = typing.get_args(tp)
        item = args[0] if typing.get_origin(tp) is list else None
        if is_dataclass(tp):
            out += leaf_paths(tp, path)
        elif item is not None and is_dataclass(item):
            out += [path] + leaf_paths(item, path + "[]")
        else:
            out.append(path)
    return out


def has_path(d, path: str) -> bool:
    node = d
    for key in path.split("."):
        if key.endswith("[]"):
            node = node.get(key[:-2]) if isinstance(node, dict) else None
            if not isinstance(node, list):
                return False
            if not node:
                return True  # an empty list documents its items in comments
            node = node[0]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return False
    return True


# --- templates -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_template_loads_and_validates(tmp_path, mode):
    cfg = load_config(write(tmp_path, render_template(mode)))
    assert cfg.analysis_mode == mode
    assert cfg.physical_parameter_names() == list(PHYSICAL_PARAMETERS[mode])
    assert cfg.initial_parameters.parameter_names == list(PHYSICAL_PARAMETERS[mode])
    assert cfg.ignored_keys == []
    assert cfg.source_path == str(tmp_path / "config.yaml")
    assert cfg.analyzer_parameters.dt is None  # 'auto'
    assert cfg.optimization.cmc.per_shard_mcmc.chain_method == "parallel"


@pytest.mark.parametrize("mode", MODES)
def test_template_sets_every_key(mode):
    d = template_dict(mode)
    missing = [p for p in leaf_paths(HomodyneConfig) if not has_path(d, p)]
    assert missing == []


@pytest.mark.parametrize("mode", MODES)
def test_template_is_the_schema(mode):
    """The template loads back as the schema's defaults plus the listed examples, and every
    field is written under its own docstring and allowed values."""
    text = render_template(mode)
    cfg = HomodyneConfig.from_dict(yaml.safe_load(text))
    assert cfg == example_config(mode)
    # outside the examples, every value is the dataclass default
    default = HomodyneConfig.from_dict(
        {"analysis_mode": mode, "analyzer_parameters": {"scattering": {"wavevector_q": 0.0054}}}
    ).to_dict()
    flat_template, flat_default = _flatten(cfg.to_dict()), _flatten(default)
    examples = {
        "analysis_mode",
        "experimental_data.file_path",
        "phi_filtering.enabled",
        "phi_filtering.target_ranges",
        "initial_parameters.values",
        "parameter_space.bounds",
    }
    differ = {k for k in flat_default if flat_template[k] != flat_default[k]}
    assert differ <= examples
    assert "initial_parameters.values" in differ
    comments = " ".join(line.strip().lstrip("# ") for line in text.splitlines() if line.strip().startswith("#"))
    comments = " ".join(comments.split())
    for cls, name, f in _all_fields(HomodyneConfig):
        doc = " ".join(field_docs(cls)[name].replace("``", "").split())
        assert doc[:60] in comments, (cls.__name__, name)
        if "choices" in f.metadata:
            assert "one of: " + ", ".join(f.metadata["choices"]) in comments
        if f.metadata.get("unit"):
            assert f"({f.metadata['unit']})" in comments


def _all_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        yield cls, f.name, f
        tp = hints[f.name]
        items = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is list]
        if is_dataclass(tp):
            yield from _all_fields(tp)
        elif items and is_dataclass(typing.get_args(items[0])[0]):
            yield from _all_fields(typing.get_args(items[0])[0])


def test_render_template_unknown_mode():
    with pytest.raises(ConfigError, match="did you mean 'static'"):
        render_template("statik")


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_template_round_trip(mode):
    cfg = HomodyneConfig.from_dict(template_dict(mode))
    assert HomodyneConfig.from_dict(cfg.to_dict()) == cfg
    assert HomodyneConfig.from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def every_field_non_default() -> dict:
    return {
        "analysis_mode": "laminar_flow",
        "shear_form": "homodyne-v2",
        "analyzer_parameters": {
            "dt": 0.25,
            "start_frame": 3,
            "end_frame": 900,
            "scattering": {"wavevector_q": 0.0123},
            "geometry": {"stator_rotor_gap": 1.5e6},
        },
        "experimental_data": {
            "file_path": None,
            "datasets": [
                {"file_path": "a.hdf", "name": "first", "wavevector_q": [0.01, 0.02]},
                {"file_path": "/abs/b.h5", "name": None, "wavevector_q": None},
            ],
        },
        "phi_filtering": {
            "enabled": True,
            "target_ranges": [
                {"min_angle": -5.0, "max_angle": 5.0},
                {"min_angle": 175.0, "max_angle": -175.0},
            ],
        },
        "initial_parameters": {
            "parameter_names": [
                "alpha",
                "D0",
                "D_offset",
                "gamma_dot_t0",
                "beta",
                "gamma_dot_t_offset",
                "phi0",
            ],
            "values": [0.3, 2000.0, 1.0, 0.02, 0.1, 0.001, -2.0],
            "fixed_parameters": ["beta", "phi0"],
            "per_angle_scaling": {"mode": "fixed", "contrast": [0.2, 0.3], "offset": [1.01, 0.99]},
        },
        "parameter_space": {
            "bounds": [
                {
                    "name": "D0",
                    "min": 10.0,
                    "max": 1e6,
                    "prior_mu": 1500.0,
                    "prior_sigma": 300.0,
                    "type": "Normal",
                },
                {
                    "name": "phi0",
                    "min": -45.0,
                    "max": 45.0,
                    "prior_mu": None,
                    "prior_sigma": None,
                    "type": "Uniform",
                },
                {
                    "name": "contrast",
                    "min": 0.01,
                    "max": 0.9,
                    "prior_mu": 0.2,
                    "prior_sigma": 0.1,
                    "type": "TruncatedNormal",
                },
            ]
        },
        "optimization": {
            "method": "both",
            "nlsq": {
                "max_iterations": 55,
                "xtol": 1e-7,
                "gtol": 1e-6,
                "ftol": 1e-9,
                "loss": "huber",
                "loss_scale": 2.5,
                "chunk_size": 4096,
                "start_search": False,
                "search_points": 30000,
                "uncertainty": "model",
                "jackknife_blocks": 7,
                "noise_model": "independent",  # the default: frame_shared needs loss linear and method nlsq (test_nlsq_frame_shared.py reads it)
                "jackknife_blocking": "equal",
                "jackknife_iterations": 3,
                "profile_check": True,
                "jackknife_parallel": "replicates",
            },
            "cmc": {
                "seed": 123,
                "calibrate": False,
                "sharding": {
                    "strategy": "random",
                    "num_shards": 6,
                    "max_points_per_shard": 50000,
                    "min_points_per_parameter": 99,
                },
                "per_shard_mcmc": {
                    "num_warmup": 11,
                    "num_samples": 22,
                    "num_chains": 3,
                    "chain_method": "sequential",
                    "target_accept_prob": 0.9,
                    "retry_target_accept_prob": 0.99,
                    "last_target_accept_prob": 0.995,
                    "extension_factor": 2,
                    "max_tree_depth": 7,
                    "min_warmup": 5,
                    "min_samples": 6,
                    "shard_timeout_s": 900.0,
                },
                "combination": {
                    "method": "gaussian_product",
                    "min_success_rate": 0.5,
                    "max_divergence_rate": 0.2,
                    "max_rhat": 1.3,
                    "outlier_zscore": 2.0,
                },
                "prior": {"width_factor": 3.0, "calibrate": False},
            },
        },
        "output": {"output_dir": "/tmp/out", "plots": False, "fit_matrices": "none", "fit_matrix_max_frames": 250},
        "compute": {"compilation_cache_dir": None, "rank_group_size": 3, "stream_points": True},
    }


def test_round_trip_every_field_non_default():
    d = every_field_non_default()
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.to_dict() == d  # every field was read, none was dropped or renamed
    assert HomodyneConfig.from_dict(cfg.to_dict()) == cfg
    again = HomodyneConfig.from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    # each value differs from its default (file_path must stay null next to datasets, and
    # noise_model at independent next to the robust loss),
    # so a field that is dropped, renamed or not read fails the first assertion
    minimal = {
        "analysis_mode": "laminar_flow",
        "analyzer_parameters": {"scattering": {"wavevector_q": 0.0054}},
    }
    default = HomodyneConfig.from_dict(minimal).to_dict()
    flat_cfg, flat_default = _flatten(cfg.to_dict()), _flatten(default)
    assert flat_cfg.keys() == flat_default.keys()
    same = [k for k in flat_cfg if flat_cfg[k] == flat_default[k]]
    # noise_model frame_shared needs the linear loss and method nlsq, both of which this config changes
    assert same == ["analysis_mode", "experimental_data.file_path", "optimization.nlsq.noise_model"]


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def test_from_dict_does_not_change_its_input():
    d = yaml.safe_load((DATA / "reference_homodyne_laminar.yaml").read_text())
    before = copy.deepcopy(d)
    HomodyneConfig.from_dict(d)
    assert d == before


def test_dt_auto_and_null_mean_from_file():
    base = template_dict("static")
    for value in ("auto", None):
        cfg = HomodyneConfig.from_dict(with_key(base, "analyzer_parameters.dt", value))
        assert cfg.analyzer_parameters.dt is None
        assert cfg.to_dict()["analyzer_parameters"]["dt"] == "auto"


# --- numbers and types -----------------------------------------------------------------


def test_scientific_notation(tmp_path):
    text = render_template("laminar_flow").replace("stator_rotor_gap: 2000000.0", "stator_rotor_gap: 2e6")
    text = text.replace("max_iterations: 100", "max_iterations: 1e3").replace("xtol: 1.0e-08", "xtol: 1e-7")
    assert "2e6" in text and "1e3" in text and "1e-7" in text
    cfg = load_config(write(tmp_path, text))
    assert cfg.analyzer_parameters.geometry.stator_rotor_gap == 2e6
    assert cfg.optimization.nlsq.max_iterations == 1000
    assert isinstance(cfg.optimization.nlsq.max_iterations, int)
    assert cfg.optimization.nlsq.xtol == 1e-7
    # numeric strings from other sources are read as numbers as well
    d = with_key(template_dict("static"), "optimization.nlsq.ftol", "1e-12")
    assert HomodyneConfig.from_dict(d).optimization.nlsq.ftol == 1e-12


def test_integral_float_for_int_and_non_integral_rejected():
    base = template_dict("static")
    cfg = HomodyneConfig.from_dict(with_key(base, "optimization.cmc.per_shard_mcmc.num_chains", 2.0))
    assert cfg.optimization.cmc.per_shard_mcmc.num_chains == 2
    message = dict_error(with_key(base, "optimization.cmc.per_shard_mcmc.num_chains", 2.5))
    assert "'optimization.cmc.per_shard_mcmc.num_chains' must be an integer" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("optimization.nlsq.max_iterations", "abc", "must be an integer, got 'abc'"),
        (
            "analyzer_parameters.scattering.wavevector_q",
            [0.1, 0.2],
            "must be a number (1/Angstrom) or null, got [0.1, 0.2]",
        ),
        ("output.plots", "yes", "must be true or false"),
        ("output.plots", 1, "must be true or false"),
        ("phi_filtering.enabled", "true", "must be true or false"),
        ("analysis_mode", 3, "must be a string"),
        ("analyzer_parameters.dt", "fast", "must be a number (s) or 'auto'"),
        ("optimization.cmc.sharding.num_shards", "many", "must be an integer or 'auto'"),
        ("initial_parameters.values", 5, "must be a list of numbers or null"),
        ("initial_parameters.per_angle_scaling.contrast", "high", "must be a number or a list of numbers"),
        ("optimization.nlsq", [1, 2], "must be a mapping"),
        ("analyzer_parameters.start_frame", True, "must be an integer"),
        ("optimization.nlsq.xtol", float("nan"), "must be a finite number"),
    ],
)
def test_wrong_type(key, value, expected):
    message = dict_error(with_key(template_dict("laminar_flow"), key, value))
    assert f"'{key}'" in message
    assert expected in message


def test_wrong_type_in_list_names_the_item():
    d = with_key(template_dict("static"), "initial_parameters.values", [1000.0, "x", 0.0])
    assert "'initial_parameters.values[1]' must be a number" in dict_error(d)


def test_wrong_type_message_shows_an_example():
    message = dict_error(with_key(template_dict("static"), "optimization.nlsq.max_iterations", "abc"))
    assert "max_iterations: 100" in message


def test_null_means_default():
    d = with_key(template_dict("static"), "optimization.nlsq.max_iterations", None)
    assert HomodyneConfig.from_dict(d).optimization.nlsq.max_iterations == 100


# --- unknown keys ----------------------------------------------------------------------


def test_unknown_key_suggests_spelling(tmp_path):
    text = render_template("static").replace("max_iterations: 100", "max_iteration: 100")
    message = load_error(tmp_path, text)
    assert "unknown key 'optimization.nlsq.max_iteration'" in message
    assert "did you mean 'max_iterations'?" in message


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("analysis_mod", "analysis_mode"),
        ("analyzer_parameters.scattering.wavevector", "wavevector_q"),
        ("optimization.cmc.per_shard_mcmc.chain_methods", "chain_method"),
        ("optimization.cmc.combintion", "combination"),
    ],
)
def test_unknown_keys_everywhere(key, suggestion):
    message = dict_error(with_key(template_dict("static"), key, 1))
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = dict_error(with_key(template_dict("static"), "output.zzz", 1))
    assert "unknown key 'output.zzz'" in message
    assert "valid keys here: output_dir, plots" in message


def test_unknown_key_in_list_item():
    d = template_dict("static")
    d["phi_filtering"]["target_ranges"][1]["max_angel"] = 3
    assert "unknown key 'phi_filtering.target_ranges[1].max_angel'" in dict_error(d)


def test_key_unknown_to_both_programs_in_reference_config_is_ignored_with_a_warning(caplog):
    d = yaml.safe_load((DATA / "reference_homodyne_laminar.yaml").read_text())
    d["optimization"]["nlsq"]["trust_regon_scale"] = 1.0
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.config"):
        cfg = HomodyneConfig.from_dict(d)
    assert "optimization.nlsq.trust_regon_scale" in cfg.ignored_keys
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'optimization.nlsq.trust_regon_scale'" in w and "spelling" in w for w in warnings)
    d["optimization"]["nlsq"]["max_iteratons"] = 3
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.config"):
        HomodyneConfig.from_dict(d)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'optimization.nlsq.max_iteratons'" in w and "did you mean 'max_iterations'" in w for w in warnings)
    # in this program's own format the same misspelling is an error naming the nearest key
    own = with_key(template_dict("static"), "optimization.nlsq.max_iteration", 5)
    assert "unknown key 'optimization.nlsq.max_iteration' -- did you mean 'max_iterations'?" in dict_error(own)


def test_missing_required_key_names_the_leaf():
    d = template_dict("static")
    del d["analyzer_parameters"]
    assert "missing key 'analyzer_parameters.scattering.wavevector_q'" in dict_error(d)
    d = template_dict("static")
    del d["analysis_mode"]
    assert "missing key 'analysis_mode'" in dict_error(d)


# --- values out of bounds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("analyzer_parameters.scattering.wavevector_q", 0.0, "it must be > 0 (1/Angstrom)"),
        ("analyzer_parameters.scattering.wavevector_q", -0.01, "out of range"),
        ("analyzer_parameters.dt", 0, "it must be > 0 (s)"),
        ("analyzer_parameters.dt", -1.0, "out of range"),
        ("analyzer_parameters.start_frame", 0, "it must be >= 1"),
        ("analyzer_parameters.geometry.stator_rotor_gap", 0, "out of range"),
        ("optimization.cmc.per_shard_mcmc.num_chains", 0, "it must be >= 1"),
        ("optimization.cmc.per_shard_mcmc.target_accept_prob", 1.0, "it must be > 0 and < 1"),
        ("optimization.cmc.combination.min_success_rate", 0.0, "it must be > 0 and <= 1"),
        ("optimization.cmc.combination.min_success_rate", 1.5, "out of range"),
        ("optimization.cmc.combination.max_divergence_rate", 0.0, "out of range"),
        ("optimization.cmc.combination.max_rhat", 1.0, "it must be > 1"),
        ("optimization.nlsq.jackknife_blocks", 1, "it must be >= 2"),
        ("optimization.cmc.sharding.num_shards", 0, "it must be >= 1"),
        ("optimization.cmc.seed", -1, "out of range"),
        ("initial_parameters.per_angle_scaling.contrast", 0.0, "it must be > 0 and <= 1"),
        ("initial_parameters.per_angle_scaling.contrast", 1.2, "out of range"),
        ("output.fit_matrix_max_frames", 1, "it must be >= 2"),
        ("output.fit_matrix_max_frames", -5, "out of range"),
    ],
)
def test_out_of_range(key, value, expected):
    message = dict_error(with_key(template_dict("laminar_flow"), key, value))
    assert f"'{key}'" in message
    assert expected in message


def test_contrast_list_item_out_of_range():
    d = with_key(template_dict("static"), "initial_parameters.per_angle_scaling.contrast", [0.5, 1.5])
    assert "'initial_parameters.per_angle_scaling.contrast[1]' = 1.5 is out of range" in dict_error(d)


def test_end_frame_before_start_frame():
    d = with_key(template_dict("static"), "analyzer_parameters.start_frame", 50)
    d = with_key(d, "analyzer_parameters.end_frame", 10)
    assert "'analyzer_parameters.end_frame' = 10 is before start_frame = 50" in dict_error(d)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("analysis_mode", "laminar", "'analysis_mode' = 'laminar' is not allowed"),
        ("shear_form", "homodyne_v2", "did you mean 'homodyne-v2'"),
        ("optimization.method", "mcmcc", "use one of: nlsq, cmc, both"),
        ("optimization.nlsq.loss", "l1", "use one of: linear, soft_l1, huber, cauchy"),
        ("initial_parameters.per_angle_scaling.mode", "indiv", "did you mean 'individual'"),
        ("optimization.cmc.sharding.strategy", "contiguos", "use one of: stratified, random"),
        ("output.fit_matrices", "downsample", "use one of: auto, full, none"),
        ("output.fit_matrices", "Full", "did you mean 'full'"),
    ],
)
def test_unknown_mode_strings(key, value, expected):
    message = dict_error(with_key(template_dict("laminar_flow"), key, value))
    assert f"'{key}'" in message
    assert expected in message


@pytest.mark.parametrize("value", ["threads", "Parallel", "vectorized", ""])
def test_bad_chain_method(value):
    d = with_key(template_dict("static"), "optimization.cmc.per_shard_mcmc.chain_method", value)
    message = dict_error(d)
    assert "'optimization.cmc.per_shard_mcmc.chain_method'" in message
    assert "use one of: parallel, sequential" in message


def test_initial_value_outside_bounds():
    d = with_key(template_dict("static"), "initial_parameters.values", [1e7, 0.0, 0.0])
    message = dict_error(d)
    assert "'initial_parameters.values[0]' (D0) = 10000000.0 is outside its bounds [100, 100000]" in message


def test_initial_value_checked_against_configured_bounds():
    d = template_dict("static")
    d["parameter_space"]["bounds"] = [{"name": "alpha", "min": -0.5, "max": 0.5}]
    d["initial_parameters"]["values"] = [1000.0, 1.0, 0.0]
    assert "(alpha) = 1.0 is outside its bounds [-0.5, 0.5]" in dict_error(d)


def test_min_not_below_max():
    d = template_dict("static")
    d["parameter_space"]["bounds"][1]["min"] = 2.0
    assert "'parameter_space.bounds[1]' (alpha) has min = 2.0 >= max = 2.0" in dict_error(d)


def test_unknown_parameter_names():
    d = with_key(template_dict("static"), "initial_parameters.parameter_names", ["D0", "alpah", "D_offset"])
    message = dict_error(d)
    assert "unknown parameter 'alpah' in 'initial_parameters.parameter_names[1]'" in message
    assert "did you mean 'alpha'?" in message
    d = template_dict("static")
    d["parameter_space"]["bounds"][0]["name"] = "D_0"
    assert "'parameter_space.bounds[0].name'" in dict_error(d)


def test_parameter_of_other_mode():
    d = with_key(template_dict("static"), "initial_parameters.parameter_names", ["D0", "alpha", "phi0"])
    assert "is not a parameter of analysis_mode 'static'" in dict_error(d)


def test_parameter_names_incomplete():
    d = with_key(template_dict("static"), "initial_parameters.parameter_names", ["D0", "alpha"])
    d = with_key(d, "initial_parameters.values", None)
    assert "'initial_parameters.parameter_names' lacks D_offset" in dict_error(d)


def test_values_length_mismatch():
    d = with_key(template_dict("laminar_flow"), "initial_parameters.values", [1000.0, 0.0, 0.0])
    message = dict_error(d)
    assert "'initial_parameters.values' has 3 values but parameter_names has 7" in message


def test_fixed_parameter_not_in_names():
    d = with_key(template_dict("static"), "initial_parameters.fixed_parameters", ["D0", "beta"])
    assert "'initial_parameters.fixed_parameters[1]' = 'beta' is not in parameter_names" in dict_error(d)


def test_contrast_outside_configured_bounds():
    d = template_dict("static")
    d["parameter_space"]["bounds"][3] = {"name": "contrast", "min": 0.1, "max": 0.4}
    assert "'initial_parameters.per_angle_scaling.contrast' = 0.5 is outside the contrast bounds" in dict_error(d)


def test_contrast_and_offset_lists_must_match():
    d = with_key(template_dict("static"), "initial_parameters.per_angle_scaling.contrast", [0.1, 0.2])
    d = with_key(d, "initial_parameters.per_angle_scaling.offset", [1.0, 1.0, 1.0])
    assert "has 2 values but" in dict_error(d)


def test_phi_filter_enabled_without_ranges():
    d = with_key(template_dict("laminar_flow"), "phi_filtering.target_ranges", [])
    assert "'phi_filtering.enabled' is true but 'phi_filtering.target_ranges' is empty" in dict_error(d)


def test_file_path_and_datasets_together():
    d = with_key(template_dict("static"), "experimental_data.datasets", [{"file_path": "x.hdf"}])
    assert "both 'experimental_data.file_path' and 'experimental_data.datasets' are set" in dict_error(d)


def test_validate_catches_later_edits():
    cfg = HomodyneConfig.from_dict(template_dict("static"))
    cfg.optimization.cmc.per_shard_mcmc.chain_method = "threads"
    with pytest.raises(ConfigError, match="chain_method"):
        cfg.validate()
    cfg = HomodyneConfig.from_dict(template_dict("static"))
    cfg.optimization.nlsq.max_iterations = "many"
    with pytest.raises(ConfigError, match="'optimization.nlsq.max_iterations' must be an integer"):
        cfg.validate()


# --- files -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'nope.yaml'}: config file not found -- ")
    assert "init-config" in message


def test_malformed_yaml_gives_line_and_column(tmp_path):
    text = "analysis_mode: static\nanalyzer_parameters:\n  dt: [0.1\n  start_frame: 1\n"
    message = load_error(tmp_path, text)
    assert "malformed YAML at line" in message
    assert "column" in message


def test_malformed_yaml_bad_indentation(tmp_path):
    text = "analysis_mode: static\nanalyzer_parameters:\n    dt: 0.1\n  start_frame: 1\n"
    message = load_error(tmp_path, text)
    assert "malformed YAML at line 4, column 3" in message


def test_duplicate_key_is_an_error(tmp_path):
    text = render_template("static").replace("  start_frame: 1\n", "  start_frame: 1\n  start_frame: 2\n")
    message = load_error(tmp_path, text)
    assert "duplicate key 'start_frame'" in message
    assert "line" in message


def test_empty_and_non_mapping_files(tmp_path):
    assert "the file is empty" in load_error(tmp_path, "# nothing here\n")
    assert "must be a mapping of sections" in load_error(tmp_path, "- a\n- b\n")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


# --- the reference package's configs ----------------------------------------------------


def test_reference_laminar_loads(caplog):
    path = DATA / "reference_homodyne_laminar.yaml"
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.config"):
        cfg = load_config(path)
    assert cfg.analysis_mode == "laminar_flow"
    assert cfg.analyzer_parameters.dt == 0.1
    assert (cfg.analyzer_parameters.start_frame, cfg.analyzer_parameters.end_frame) == (100, 1100)
    assert cfg.analyzer_parameters.geometry.stator_rotor_gap == 2e6
    assert cfg.experimental_data.file_path == "./data/shear_run.hdf"
    # old parameter spellings are mapped; {name: value} fixed parameters go into values
    assert cfg.initial_parameters.parameter_names == list(PHYSICAL_PARAMETERS["laminar_flow"])
    assert cfg.initial_parameters.fixed_parameters == ["beta"]
    np.testing.assert_array_equal(cfg.physical_initial_values(), [1500.0, -0.5, 5.0, 0.02, 0.0, 0.0, 1.0])
    assert cfg.fixed_mask().tolist() == [False, False, False, False, True, False, False]
    assert cfg.parameter_space.bounds_for("phi0") == (-30.0, 30.0)
    assert cfg.parameter_space.bound("beta").type == "Normal"
    # per-angle mode 'auto' -> individual; contrast/offset null -> defaults
    scaling = cfg.initial_parameters.per_angle_scaling
    assert (scaling.mode, scaling.contrast, scaling.offset) == ("individual", 0.5, 1.0)
    # optimization
    opt = cfg.optimization
    assert opt.method == "cmc"
    assert opt.nlsq.ftol == 1e-8 and opt.nlsq.max_iterations == 150 and opt.nlsq.loss == "soft_l1"
    assert opt.cmc.seed == 7
    assert opt.cmc.sharding.max_points_per_shard == 20000
    assert opt.cmc.sharding.num_shards == "auto"
    assert opt.cmc.sharding.min_points_per_parameter == 1500
    shard = opt.cmc.per_shard_mcmc
    assert (shard.num_warmup, shard.num_samples, shard.num_chains) == (500, 1500, 2)
    assert shard.target_accept_prob == 0.85
    assert shard.max_tree_depth == 12  # filled from the base optimization.mcmc block
    comb = opt.cmc.combination
    assert (comb.method, comb.min_success_rate, comb.max_rhat, comb.max_divergence_rate) == (
        "consensus_mc",
        0.9,
        1.05,
        0.05,
    )
    assert cfg.output.output_dir == "./results"
    assert cfg.output.plots is False
    # ignored keys: whole sections, single keys, list-item keys
    for key in (
        "metadata",
        "analysis_settings",
        "noise_estimation",
        "performance",
        "logging",
        "quality_control",
        "validation",
        "plotting",  # what is left of it after save_plots
        "experimental_data.phi_angles_file",
        "experimental_data.data_folder_path",
        "phi_filtering.target_ranges[].description",
        "parameter_space.bounds[].unit",
        "initial_parameters.units",
        "optimization.nlsq.trust_region_scale",
        "optimization.nlsq.x_scale_map",
        "optimization.nlsq.anti_degeneracy",  # what is left of it after per_angle_mode
        "optimization.stratification",
        "optimization.cmc.backend_config",
        "optimization.cmc.validation",  # what is left of it after the moves
        "optimization.mcmc.num_warmup",
    ):
        assert key in cfg.ignored_keys, key
    for key in (
        "optimization.nlsq.tolerance",
        "optimization.cmc.per_angle_mode",
        "plotting.save_plots",
        "output.directory",
        "optimization.mcmc.max_tree_depth",
        "optimization.cmc.per_shard_timeout",
    ):
        assert key not in cfg.ignored_keys, key
    assert cfg.optimization.cmc.per_shard_mcmc.shard_timeout_s == 7200.0
    # the ignored keys are logged once, in one line
    ignored_lines = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored_lines) == 1
    assert "optimization.nlsq.trust_region_scale" in ignored_lines[0].getMessage()
    auto_lines = [r for r in caplog.records if "'auto'" in r.getMessage() and "individual" in r.getMessage()]
    assert len(auto_lines) == 1 and auto_lines[0].levelno == logging.INFO
    # and it round-trips
    assert HomodyneConfig.from_dict(cfg.to_dict()) == cfg


def test_reference_static_loads():
    cfg = load_config(DATA / "reference_homodyne_static.yaml")
    assert cfg.analysis_mode == "static"  # from 'static_isotropic'
    assert cfg.experimental_data.file_path == "./data/gel_static.hdf"
    assert cfg.initial_parameters.values is None
    assert cfg.initial_parameters.fixed_parameters == ["D_offset"]  # from active_parameters
    scaling = cfg.initial_parameters.per_angle_scaling
    assert (scaling.mode, scaling.contrast, scaling.offset) == ("fixed", [0.05, 0.06], [1.0, 0.99])
    np.testing.assert_allclose(cfg.physical_initial_values(), [50050.0, 0.0, 0.0])
    wrap = cfg.phi_filtering.target_ranges[1]
    assert (wrap.min_angle, wrap.max_angle) == (170.0, -170.0)
    # CMC blocks under optimization.mcmc are read as optimization.cmc
    cmc = cfg.optimization.cmc
    assert cmc.sharding.num_shards == 8
    assert cmc.combination.method == "gaussian_product"  # from weighted_gaussian
    assert cmc.combination.min_success_rate == 0.75
    assert cmc.combination.max_rhat == 1.2
    shard = cmc.per_shard_mcmc
    assert (shard.num_warmup, shard.num_samples, shard.num_chains) == (400, 800, 2)
    assert (shard.target_accept_prob, shard.max_tree_depth) == (0.9, 12)
    assert cfg.output.output_dir == "./results_static"
    for key in (
        "optimization.mcmc.sharding.seed_base",
        "optimization.mcmc.validation",  # what is left of it after the moves
        "optimization.mcmc.num_warmup",
        "optimization.mcmc",
        "metadata",
    ):
        assert key in cfg.ignored_keys, key
    assert HomodyneConfig.from_dict(cfg.to_dict()) == cfg


def test_reference_minimal_laminar_with_static_mode_flag():
    d = {
        "analysis_settings": {"static_mode": False},
        "analyzer_parameters": {
            "dt": 0.1,
            "start_frame": 1,
            "end_frame": 100,
            "scattering": {"wavevector_q": 0.005},
        },
        "experimental_data": {"file_path": "x.hdf"},
        "initial_parameters": {
            "parameter_names": [
                "D0",
                "alpha",
                "D_offset",
                "gamma_dot_t0",
                "beta",
                "gamma_dot_t_offset",
                "phi0",
            ],
            "values": [1000.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0],
            "active_parameters": ["D0", "alpha", "gamma_dot_t0", "phi0"],
        },
        "optimization": {
            "nlsq": {"loss": "soft_l1"},
            "cmc": {"combination_method": "auto", "sharding": {"strategy": "random"}},
        },
    }
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.analysis_mode == "laminar_flow"
    assert cfg.initial_parameters.fixed_parameters == ["D_offset", "beta", "gamma_dot_t_offset"]
    assert cfg.optimization.nlsq.loss == "soft_l1"
    assert cfg.optimization.cmc.combination.method == "barycenter"
    assert cfg.optimization.cmc.sharding.strategy == "random"
    assert "analysis_settings" in cfg.ignored_keys


@pytest.mark.parametrize(
    ("reference", "ours"),
    [
        ("auto", "individual"),
        ("individual", "individual"),
        ("constant_averaged", "averaged"),
        ("averaged", "averaged"),
    ],
)
def test_reference_per_angle_modes(reference, ours):
    d = with_key(template_dict("static"), "optimization.cmc.per_angle_mode", reference)
    d["initial_parameters"]["per_angle_scaling"] = {"contrast": None, "offset": None}
    assert HomodyneConfig.from_dict(d).initial_parameters.per_angle_scaling.mode == ours


def test_reference_per_angle_modes_that_change_results_are_honoured_or_refused():
    d = with_key(template_dict("static"), "optimization.cmc.per_angle_mode", "constant")
    d["initial_parameters"]["per_angle_scaling"] = {"contrast": [0.1, 0.2], "offset": [1.0, 1.0]}
    assert HomodyneConfig.from_dict(d).initial_parameters.per_angle_scaling.mode == "fixed"
    d["initial_parameters"]["per_angle_scaling"] = {"contrast": None, "offset": None}
    assert "'constant' needs the per-angle contrast and offset" in dict_error(d)
    d = with_key(d, "optimization.cmc.per_angle_mode", "fourier")
    assert "'optimization.cmc.per_angle_mode' = 'fourier'" in dict_error(d)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("optimization.nlsq.loss", "arctan", "arctan loss is not available"),
        ("optimization.cmc.sharding.strategy", "contiguous", "leave angles out of shards"),
        ("optimization.cmc.combination.method", "simple_average", "use consensus_mc"),
        ("optimization.nlsq.anti_degeneracy.regularization.enable", True, "penalty to chi2"),
    ],
)
def test_reference_values_without_equivalent_are_refused(key, value, words):
    d = yaml.safe_load((DATA / "reference_homodyne_static.yaml").read_text())
    message = dict_error(with_key(d, key, value))
    assert f"'{key}'" in message and words in message


def test_our_per_angle_mode_wins_over_reference():
    d = with_key(template_dict("static"), "optimization.nlsq.anti_degeneracy", {"per_angle_mode": "constant"})
    d = with_key(d, "initial_parameters.per_angle_scaling.mode", "averaged")
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.initial_parameters.per_angle_scaling.mode == "averaged"
    assert "optimization.nlsq.anti_degeneracy.per_angle_mode" in cfg.ignored_keys


def test_unknown_reference_per_angle_mode():
    d = with_key(template_dict("static"), "optimization.cmc.per_angle_mode", "wobbly")
    del d["initial_parameters"]["per_angle_scaling"]["mode"]
    assert "'optimization.cmc.per_angle_mode' = 'wobbly' (a string) is not a per-angle mode" in dict_error(d)


def test_reference_name_and_ours_together_ours_wins():
    d = with_key(template_dict("static"), "optimization.nlsq.tolerance", 1e-6)
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.optimization.nlsq.ftol == 1e-10
    assert cfg.ignored_keys == ["optimization.nlsq.tolerance"]


def test_reference_ignored_keys_logged_once(caplog):
    d = with_key(template_dict("static"), "metadata", {"config_version": "2.22.2"})
    d = with_key(d, "optimization.nlsq.trust_region_scale", 1.0)
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.config"):
        cfg = HomodyneConfig.from_dict(d)
    assert cfg.ignored_keys == ["metadata", "optimization.nlsq.trust_region_scale"]
    lines = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert lines == [
        "config: ignoring 2 key(s) of the reference homodyne package that homodyne_mpi does not use: "
        "metadata, optimization.nlsq.trust_region_scale"
    ]
    # ignored keys are not written back
    assert "metadata" not in cfg.to_dict()


# --- helpers used by the rest of the program --------------------------------------------


def test_programmatic_construction():
    from homodyne_mpi.config import AnalyzerConfig, ScatteringConfig

    cfg = HomodyneConfig(
        analysis_mode="static",
        analyzer_parameters=AnalyzerConfig(scattering=ScatteringConfig(wavevector_q=0.01)),
    )
    cfg.validate()
    assert cfg.initial_parameters.parameter_names == list(PHYSICAL_PARAMETERS["static"])
    assert HomodyneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError):
        AnalyzerConfig(0.1)  # keyword-only


def test_reference_base_mcmc_fills_per_shard_settings():
    d = template_dict("static")
    del d["optimization"]["cmc"]["per_shard_mcmc"]
    d["optimization"]["mcmc"] = {"num_warmup": 123, "max_treedepth": 9, "dense_mass_matrix": True}
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.optimization.cmc.per_shard_mcmc.num_warmup == 123
    assert cfg.optimization.cmc.per_shard_mcmc.max_tree_depth == 9
    assert cfg.ignored_keys == ["optimization.mcmc"]  # what is left of it: dense_mass_matrix


def test_physical_views_canonical_order():
    d = template_dict("laminar_flow")
    d["initial_parameters"]["parameter_names"] = [
        "phi0",
        "D0",
        "alpha",
        "D_offset",
        "gamma_dot_t0",
        "beta",
        "gamma_dot_t_offset",
    ]
    d["initial_parameters"]["values"] = [3.0, 1000.0, 0.5, 1.0, 0.01, 0.2, 0.001]
    d["initial_parameters"]["fixed_parameters"] = ["phi0"]
    cfg = HomodyneConfig.from_dict(d)
    np.testing.assert_array_equal(cfg.physical_initial_values(), [1000.0, 0.5, 1.0, 0.01, 0.2, 0.001, 3.0])
    assert cfg.fixed_mask().tolist() == [False] * 6 + [True]
    lo, hi = cfg.physical_bounds()
    assert lo.tolist() == [DEFAULT_BOUNDS[n][0] for n in PHYSICAL_PARAMETERS["laminar_flow"]]
    assert hi.tolist() == [DEFAULT_BOUNDS[n][1] for n in PHYSICAL_PARAMETERS["laminar_flow"]]


def test_values_null_means_mid_bounds():
    d = with_key(template_dict("static"), "initial_parameters.values", None)
    d["parameter_space"]["bounds"] = [{"name": "alpha", "min": 0.0, "max": 1.0}]
    cfg = HomodyneConfig.from_dict(d)
    np.testing.assert_allclose(cfg.physical_initial_values(), [50050.0, 0.5, 0.0])
    assert cfg.parameter_space.bounds_for("D0") == DEFAULT_BOUNDS["D0"]
    assert cfg.parameter_space.bounds_for("offset") == DEFAULT_BOUNDS["offset"]


def test_parameter_names_default_to_mode():
    d = template_dict("laminar_flow")
    del d["initial_parameters"]["parameter_names"]
    cfg = HomodyneConfig.from_dict(d)
    assert cfg.initial_parameters.parameter_names == list(PHYSICAL_PARAMETERS["laminar_flow"])


def test_resolved_datasets(tmp_path):
    data = ExperimentalDataConfig(
        datasets=[
            DatasetConfig(file_path="runs/a.hdf"),
            DatasetConfig(file_path="/abs/b.h5", name="bee", wavevector_q=[0.01, 0.025]),
            DatasetConfig(file_path="c.hdf", wavevector_q=[0.004]),
        ]
    )
    got = data.resolved_datasets(tmp_path)
    assert [(d.name, d.wavevector_q) for d in got] == [
        ("a", None),
        ("bee_q0.01", [0.01]),
        ("bee_q0.025", [0.025]),
        ("c", [0.004]),
    ]
    assert got[0].file_path == str(tmp_path / "runs" / "a.hdf")
    assert got[1].file_path == "/abs/b.h5"


def test_resolved_datasets_from_file_path_relative_to_config(tmp_path):
    path = write(tmp_path, render_template("static"))
    cfg = load_config(path)
    (entry,) = cfg.resolved_datasets()
    assert entry.file_path == str(tmp_path / "data" / "experiment.hdf")
    assert entry.name == "experiment"
    assert entry.wavevector_q is None


def test_resolved_datasets_errors():
    with pytest.raises(ConfigError, match="no data"):
        ExperimentalDataConfig().resolved_datasets()
    data = ExperimentalDataConfig(datasets=[DatasetConfig(file_path="x/a.hdf"), DatasetConfig(file_path="y/a.hdf")])
    with pytest.raises(ConfigError, match="resolve to the name 'a'"):
        data.resolved_datasets("/")


def test_dataset_scalar_q_and_bad_name():
    d = with_key(template_dict("static"), "experimental_data.file_path", None)
    d["experimental_data"]["datasets"] = [{"file_path": "a.hdf", "wavevector_q": 0.01}]
    assert HomodyneConfig.from_dict(d).experimental_data.datasets[0].wavevector_q == [0.01]
    d["experimental_data"]["datasets"] = [{"file_path": "a.hdf", "name": "../up"}]
    assert "cannot name a results folder" in dict_error(d)
    d["experimental_data"]["datasets"] = [{"file_path": "a.hdf", "wavevector_q": [0.01, -1.0]}]
    assert "'experimental_data.datasets[0].wavevector_q[1]' = -1.0 is out of range" in dict_error(d)


def test_scaling_arrays():
    cfg = HomodyneConfig.from_dict(template_dict("static"))
    contrast, offset = cfg.initial_parameters.per_angle_scaling.scaling_arrays(3)
    assert contrast.tolist() == [0.5] * 3 and offset.tolist() == [1.0] * 3
    scaling = cfg.initial_parameters.per_angle_scaling
    scaling.contrast = [0.1, 0.2]
    with pytest.raises(ConfigError, match="has 2 values but 3 angles are selected"):
        scaling.scaling_arrays(3)


def test_config_module_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, homodyne_mpi.config as c; c.render_template('static'); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
