"""The commented YAML template of ``homodyne-mpi init-config``, generated from the schema.

Every key is written under its field's docstring and allowed values, with its default as the value, so the template
cannot disagree with the dataclasses. Examples stand only where no default can: the mode, the wavevector and data file
(the fields' ``example``), typical starting values, the default bounds of each parameter and a few angle ranges.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import typing
from dataclasses import is_dataclass
from functools import cache
from typing import Any

import yaml

from ..errors import ConfigError
from ..vocabulary import ANALYSIS_MODES, PARAMETER_UNITS, PHYSICAL_PARAMETERS
from .context import did_you_mean
from .generic import describe, entry_dataclass, limits_text, schema_fields, to_plain, type_hints
from .schema import HomodyneConfig
from .sections import DEFAULT_BOUNDS, SCALING_PARAMETERS, ExperimentalDataConfig, ScatteringConfig

EXAMPLE_VALUES = {"D0": 1000.0, "alpha": 0.0, "D_offset": 0.0, "gamma_dot_t0": 0.01, "beta": 0.0,
                  "gamma_dot_t_offset": 0.0, "phi0": 0.0}  # fmt: skip
"""Typical starting values (and the truth that ``simulate`` uses), inside DEFAULT_BOUNDS."""
PHI_RANGES = {
    "static": (False, [(-10.0, 10.0), (170.0, -170.0)]),
    "laminar_flow": (True, [(-10.0, 10.0), (80.0, 100.0), (170.0, -170.0)]),
}
"""Example angle selection of each mode: (enabled, [(min_angle, max_angle), ...]), degrees."""

_HEAD = """\
# homodyne_mpi configuration -- analysis_mode: {mode}
# Written by `homodyne-mpi init-config --mode {mode}`. Check an edited copy with
# `homodyne-mpi validate CONFIG` (prints the resolved config, defaults filled in).
#
# Units: times in seconds, lengths in Angstrom, q in 1/Angstrom, angles in degrees.
# `null` for a key with a default means that default. Numbers may be written 1e5.
# A config written for the reference `homodyne` package (v2.x) loads as it is: keys it
# has that this program does not use are listed once in the log as ignored.
"""


def example_config(mode: str) -> HomodyneConfig:
    """The config the template of ``mode`` writes: the schema's defaults and the examples."""
    names = list(PHYSICAL_PARAMETERS[mode])
    enabled, ranges = PHI_RANGES[mode]
    bounds = [{"name": n, "min": DEFAULT_BOUNDS[n][0], "max": DEFAULT_BOUNDS[n][1]} for n in [*names, *SCALING_PARAMETERS]]
    return HomodyneConfig.from_dict(
        {
            "analysis_mode": mode,
            "analyzer_parameters": {"scattering": {"wavevector_q": float(_example(ScatteringConfig, "wavevector_q"))}},
            "experimental_data": {"file_path": _example(ExperimentalDataConfig, "file_path")},
            "phi_filtering": {"enabled": enabled, "target_ranges": [{"min_angle": lo, "max_angle": hi} for lo, hi in ranges]},
            "initial_parameters": {"parameter_names": names, "values": [EXAMPLE_VALUES[n] for n in names]},
            "parameter_space": {"bounds": bounds},
        },
        source="template",
    )


def render_template(mode: str) -> str:
    """Commented YAML template for ``init-config --mode static|laminar_flow``."""
    if mode not in ANALYSIS_MODES:
        raise ConfigError(
            f"init-config: unknown mode '{mode}' -- use one of {', '.join(ANALYSIS_MODES)}"
            + did_you_mean(mode, list(ANALYSIS_MODES))
        )
    return _HEAD.format(mode=mode) + "\n" + "\n".join(_render(example_config(mode), "")) + "\n"


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls``, by name (a section field without one: its class docstring)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {name: inspect.cleandoc(tp.__doc__ or "") for name, tp in type_hints(cls).items() if is_dataclass(tp)}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr):
            if isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def allowed(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """The values a field allows, in words: ``an integer; >= 1``, ``one of: a, b``."""
    if meta.get("choices"):
        return "one of: " + ", ".join(meta["choices"])
    limits = limits_text(meta)
    return describe(tp, meta) + (f"; {limits}" if limits else "")


def _render(obj: Any, indent: str) -> list[str]:
    """Lines of the YAML block of dataclass ``obj``, each key under its comment."""
    cls = obj.__class__
    hints, docs, plain = type_hints(cls), field_docs(cls), to_plain(obj)
    lines: list[str] = []
    for name, f in schema_fields(cls).items():
        value, tp = getattr(obj, name), hints[name]
        if not indent and lines:
            lines.append("")
        lines += _comment(docs[name], indent)
        if is_dataclass(tp):
            lines.append(f"{indent}{name}:")
            lines += _render(value, indent + "  ")
            continue
        item = entry_dataclass(tp)
        if item is None:
            lines += _comment(f"({allowed(tp, f.metadata)})", indent)
            lines.append(f"{indent}{name}: {_flow(plain[name])}")
            continue
        item_docs = field_docs(item)
        lines.append(f"{indent}# Each entry:")
        for key, item_field in schema_fields(item).items():
            text = f"{key}: {item_docs[key]} ({allowed(type_hints(item)[key], item_field.metadata)})"
            lines += _comment(text, indent, hang="      ", lead="  ")
        lines.append(f"{indent}{name}:" + ("" if value else " []"))
        for entry in value:
            unit = PARAMETER_UNITS.get(getattr(entry, "name", ""), "")
            lines.append(f"{indent}  - {_flow(to_plain(entry))}" + (f"  # {unit}" if unit else ""))
    return lines


def _comment(text: str, indent: str, hang: str = "", lead: str = "") -> list[str]:
    """``text`` as ``#`` lines that fit 90 columns; a line starting ``- `` starts an item."""
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n(?=- )", text.replace("``", ""))]
    out = []
    for block in blocks:
        more = hang + ("  " if block.startswith("- ") else "")
        out += [f"{indent}# {part}" for part in textwrap.wrap(lead + block, width=88 - len(indent), subsequent_indent=more)]
    return out


def _flow(value: Any) -> str:
    """One-line YAML of ``value``, keys in field order."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("...").strip()


def _example(cls: type, name: str) -> str:
    """The ``example`` of a field that has no default."""
    return schema_fields(cls)[name].metadata["example"]
