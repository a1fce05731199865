"""Command-line values that start with a minus sign: ``--phi -30,0,30``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, template_config

from homodyne_mpi.cli import attach_negative_values, build_parser


def test_every_option_with_a_value_takes_a_negative_list():
    parser = build_parser()
    argv = ["simulate", "c.yaml", "--output", "x.h5", "--phi", "-30,0,30", "--noise", "-.5", "--seed", "3"]
    assert attach_negative_values(parser, argv) == [
        "simulate", "c.yaml", "--output", "x.h5", "--phi=-30,0,30", "--noise=-.5", "--seed", "3",
    ]  # fmt: skip
    assert parser.parse_args(attach_negative_values(parser, argv)).phi == "-30,0,30"
    # flags are left alone: '-v' after '--fresh' is an option, not a value
    assert attach_negative_values(parser, ["run", "c.yaml", "--fresh", "-v"]) == ["run", "c.yaml", "--fresh", "-v"]
    # without the rewrite argparse reads '-30,0,30' as an unknown option
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


def test_simulate_phi_starting_with_minus_writes_three_angles(tmp_path: Path):
    config = template_config(
        "static",
        **{"analyzer_parameters.dt": 0.1, "analyzer_parameters.end_frame": 12, "output.plots": False},
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    data = tmp_path / "x.h5"
    result = run_cli("simulate", str(path), "--output", str(data), "--phi", "-30,0,30", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 angles" in result.stdout
    truth = json.loads(Path(f"{data}.truth.json").read_text())
    assert [float(p) for p in truth["phi"]] == [-30.0, 0.0, 30.0]
