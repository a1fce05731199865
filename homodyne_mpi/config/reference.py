"""Configs of the reference ``homodyne`` package (v2.x): recognise them and adapt them.

``reference_keys.yaml`` (its header explains the classes ``same``, ``mapped``, ``refused``, ``ignored``) classifies
every key path the reference package writes. A config using one of them that has no own equivalent is reference-format:
adapted in place (``adapt_reference``), then parsed leniently, keys left without an equivalent ignored (logged once).
A config in this program's own format is parsed strictly. Four rules read what a move cannot:

- ``static_mode``: a missing ``analysis_mode`` comes from ``analysis_settings.static_mode``; a missing ``wavevector_q``
  means the first q the data file stores (as the reference does).
- ``data_file``: ``experimental_data.data_folder_path`` + ``data_file_name`` make ``file_path`` unless it is given.
- ``parameter_names``: the names of ``PARAMETER_ALIASES`` are renamed wherever names are listed; ``fixed_parameters``
  as ``{name: value}`` fixes those names at those values; ``active_parameters`` (the names to fit) fixes the others.
- ``per_angle_mode`` (``optimization.nlsq.anti_degeneracy``, then ``optimization.cmc``, then ``optimization.mcmc``)
  sets ``initial_parameters.per_angle_scaling.mode`` unless given, as ``_PER_ANGLE`` says (``constant`` needs the
  scaling values); ``fourier`` is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ..vocabulary import ANALYSIS_MODES, PHYSICAL_PARAMETERS
from .context import Context, join, show, suggest_fix, yaml_scalar
from .generic import coerce

PARAMETER_ALIASES = {
    "gamma_dot_0": "gamma_dot_t0",
    "gamma_dot_t_0": "gamma_dot_t0",
    "gamma_dot_offset": "gamma_dot_t_offset",
    "phi_0": "phi0",
}
_PER_ANGLE = {"auto": "individual", "individual": "individual", "averaged": "averaged",
              "constant_averaged": "averaged", "constant": "fixed"}  # fmt: skip


@cache
def reference_keys() -> dict[str, Any]:
    """The key table: ``{'same': [...], 'mapped': {...}, 'refused': {...}, 'ignored': [...]}``."""
    return yaml.safe_load((Path(__file__).parent / "reference_keys.yaml").read_text(encoding="utf-8"))


def classify(path: str) -> str | None:
    """``same``, ``mapped``, ``refused`` or ``ignored`` for a key path (indices as ``[]``)."""
    table = reference_keys()
    for kind in ("same", "mapped", "refused", "ignored"):
        if path in table[kind]:
            return kind
    for source, entry in table["mapped"].items():
        if entry.get("merge") and path.startswith(source + "."):
            return "mapped"
    return None


def key_paths(raw: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every ``(path, value)`` of a nested mapping, list indices written ``[]``."""
    out: list[tuple[str, Any]] = []
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            path = join(prefix, str(key))
            out.append((path, value))
            out += key_paths(value, path)
    elif isinstance(raw, list) and prefix:
        for item in raw:
            out += key_paths(item, prefix + "[]")
    return out


def is_reference_format(raw: Mapping[str, Any]) -> bool:
    """True when ``raw`` uses a key (or a value) that only the reference package writes."""
    table = reference_keys()
    for path, value in key_paths(raw):
        entry = table["mapped"].get(path)
        if path in table["ignored"] or path in table["refused"]:
            return True
        if entry is None or entry.get("own"):
            continue
        if entry.get("to") != path or (isinstance(value, str) and value in entry.get("values", {})):
            return True
    return False


def adapt_reference(raw: dict[str, Any], ctx: Context) -> None:
    """Rewrite a reference-format config (no other) into this program's layout, in place, and make ``ctx`` lenient; a
    value with no equivalent here that would change the results is a ``ConfigError`` naming the key."""
    if not isinstance(raw, dict) or not is_reference_format(raw):
        return
    ctx.lenient = True
    table = reference_keys()
    for path, entry in table["refused"].items():
        found, value = _get(raw, path)
        if found and value is not None and value != entry["unless"]:
            raise ctx.error(
                f"'{path}' = {show(value)} is not supported: {entry['why']}",
                f"remove it or set it to {yaml_scalar(entry['unless'])}",
            )
    _static_mode(raw, ctx)
    if not _get(raw, "analyzer_parameters.scattering.wavevector_q")[0]:
        _section(raw, "analyzer_parameters.scattering", ctx)["wavevector_q"] = None
        ctx.info("no analyzer_parameters.scattering.wavevector_q: the first q the data file stores is used")
    _data_file(raw, ctx)
    _parameter_names(raw, ctx)
    sources = [path for path, entry in table["mapped"].items() if entry.get("by") == "per_angle_mode"]  # in priority order
    per_angle = [(path, _pop(raw, path)) for path in sources if _get(raw, path)[0]]
    for path, entry in table["mapped"].items():
        if "to" in entry:
            _apply_move(raw, path, entry, ctx)
    _per_angle_mode(raw, per_angle, ctx)


def finish_reference(ctx: Context) -> None:
    """Warn about ignored keys that the reference package does not write either."""
    for path in ctx.ignored:
        if classify(path) is None:
            ctx.warn(
                f"'{path}' is neither a homodyne_mpi key nor one of the reference package's; check its spelling"
                + ctx.nearest.get(path, "")
            )


def apply_fixed_values(cfg: Any, ctx: Context) -> None:
    """Put the values of a reference ``fixed_parameters: {name: value}`` into ``values``."""
    if not ctx.fixed_values:
        return
    init = cfg.initial_parameters
    names = init.parameter_names
    if init.values is None:
        values = []
        for name in names:
            try:
                lo, hi = cfg.parameter_space.bounds_for(name)
            except KeyError:  # unknown name: validation reports it
                lo = hi = 0.0
            values.append(0.5 * (lo + hi))
    else:
        values = list(init.values)
    if len(values) != len(names):
        return  # validation reports the length mismatch
    for name, value in ctx.fixed_values.items():
        number = coerce(value, float, f"initial_parameters.fixed_parameters.{name}", ctx)
        if name in names:
            values[names.index(name)] = number
    init.values = values


def _get(raw: Any, path: str) -> tuple[bool, Any]:
    node = raw
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _pop(raw: dict[str, Any], path: str) -> Any:
    """Remove the key at ``path`` and return its value; drop sections it leaves empty."""
    key, _, rest = path.partition(".")
    if not rest:
        return raw.pop(key)
    value = _pop(raw[key], rest)
    if not raw[key]:
        del raw[key]
    return value


def _section(raw: dict[str, Any], path: str, ctx: Context) -> dict[str, Any]:
    """The mapping at ``path``, created where missing; a non-mapping there is an error."""
    node = raw
    walked = ""
    for key in path.split("."):
        walked = join(walked, key)
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], Mapping):
            raise ctx.error(
                f"'{ctx.where(walked)}' must be a mapping (a YAML section of key: value lines), got {show(node[key])}",
                f"indent its keys under '{key}:'",
            )
        node[key] = dict(node[key])
        node = node[key]
    return node


def _apply_move(raw: dict[str, Any], path: str, entry: Mapping[str, Any], ctx: Context) -> None:
    found, value = _get(raw, path)
    if not found:
        return
    target = entry["to"]
    if target == path and not isinstance(value, str):
        return
    if entry.get("merge"):
        if value is not None and not isinstance(value, Mapping):
            raise ctx.error(
                f"'{path}' must be a mapping, got {show(value)}", f"indent its keys under '{path.rsplit('.', 1)[-1]}:'"
            )
        if not _get(raw, target)[0]:
            ctx.origin[target] = path
        for key in list(value or {}):
            _apply_move(raw, f"{path}.{key}", {"to": f"{target}.{key}"}, ctx)
        if _get(raw, path)[0]:
            _pop(raw, path)
        ctx.info(f"'{path}' (reference package) read as '{target}'")
        return
    if isinstance(value, str) and value in entry.get("refuse", {}):
        why, _, fix = entry["refuse"][value].partition("; ")  # the table writes "why; fix"
        raise ctx.error(f"'{ctx.where(path)}' = '{value}' is not supported: {why}", fix or "change the value")
    if isinstance(value, str) and value in entry.get("values", {}):
        value = entry["values"][value]
        ctx.info(f"'{ctx.where(path)}' = '{_get(raw, path)[1]}' (reference package) read as '{value}'")
    parent, _, leaf = target.rpartition(".")
    if target == path:
        (_section(raw, parent, ctx) if parent else raw)[leaf] = value
        return
    _pop(raw, path)
    section = _section(raw, parent, ctx) if parent else raw
    if section.get(leaf) is not None:
        ctx.ignore(ctx.where(path))  # the key set here wins
        return
    section[leaf] = value
    ctx.origin[target] = ctx.where(path)
    ctx.info(f"'{ctx.where(path)}' (reference package) read as '{target}'")


def _static_mode(raw: dict[str, Any], ctx: Context) -> None:
    static_mode = _get(raw, "analysis_settings.static_mode")[1]
    if not isinstance(static_mode, bool):
        return
    if raw.get("analysis_mode") is None:
        raw["analysis_mode"] = "static" if static_mode else "laminar_flow"
        ctx.info(f"analysis_mode '{raw['analysis_mode']}' taken from 'analysis_settings.static_mode'")
    mode = reference_keys()["mapped"]["analysis_mode"]["values"].get(raw["analysis_mode"], raw["analysis_mode"])
    if mode in ANALYSIS_MODES and static_mode != (mode == "static"):
        ctx.warn(
            f"'analysis_settings.static_mode: {str(static_mode).lower()}' disagrees with "
            f"analysis_mode '{mode}'; analysis_mode is used"
        )


def _data_file(raw: dict[str, Any], ctx: Context) -> None:
    data = raw.get("experimental_data")
    if not isinstance(data, dict):
        return
    parts = {key: data.pop(key, None) for key in ("data_folder_path", "data_file_name")}
    if data.get("file_path") is None and parts["data_file_name"] is not None:
        for key, value in parts.items():
            if value is not None and not isinstance(value, str):
                raise ctx.error(f"'experimental_data.{key}' must be a string, got {show(value)}", "put the value in quotes")
        data["file_path"] = os.path.join(parts["data_folder_path"] or "", parts["data_file_name"])
        ctx.info(
            "'experimental_data.data_folder_path' + 'data_file_name' (reference package) read as 'experimental_data.file_path'"
        )
        return
    for key, value in parts.items():
        if value is not None:
            ctx.ignore(f"experimental_data.{key}")


def _alias(name: Any, ctx: Context) -> Any:
    if isinstance(name, str) and name in PARAMETER_ALIASES:
        ctx.info(f"parameter name '{name}' (reference package) read as '{PARAMETER_ALIASES[name]}'")
        return PARAMETER_ALIASES[name]
    return name


def _parameter_names(raw: dict[str, Any], ctx: Context) -> None:
    bounds = _get(raw, "parameter_space.bounds")[1]
    for entry in bounds if isinstance(bounds, list) else []:
        if isinstance(entry, dict) and "name" in entry:
            entry["name"] = _alias(entry["name"], ctx)
    init = raw.get("initial_parameters")
    if not isinstance(init, dict):
        return
    names = init.get("parameter_names")
    if isinstance(names, list):
        init["parameter_names"] = names = [_alias(n, ctx) for n in names]
    fixed = init.get("fixed_parameters")
    if isinstance(fixed, Mapping):
        ctx.fixed_values = {_alias(k, ctx): v for k, v in fixed.items()}
        init["fixed_parameters"] = list(ctx.fixed_values)
        ctx.info(
            "'initial_parameters.fixed_parameters' as {name: value} (reference package): names held fixed, values put into initial_parameters.values"
        )
    elif isinstance(fixed, list):
        init["fixed_parameters"] = [_alias(n, ctx) for n in fixed]
    active = init.pop("active_parameters", None)
    if active is None:
        return
    path = "initial_parameters.active_parameters"
    if not isinstance(active, list) or not all(isinstance(n, str) for n in active):
        raise ctx.error(f"'{path}' must be a list of strings, got {show(active)}", "write it like '[D0, alpha]'")
    active = [_alias(n, ctx) for n in active]
    if not isinstance(names, list):
        names = list(PHYSICAL_PARAMETERS.get(str(raw.get("analysis_mode")), []))
    for i, name in enumerate(active):
        if name not in names:
            raise ctx.error(f"'{path}[{i}]' = '{name}' is not in parameter_names", suggest_fix(name, list(names)))
    held = [n for n in names if n not in active]
    if held:
        fixed_list = init["fixed_parameters"] if isinstance(init.get("fixed_parameters"), list) else []
        init["fixed_parameters"] = fixed_list + [n for n in held if n not in fixed_list]
        ctx.info(f"'{path}' (reference package): the other parameters ({', '.join(held)}) are held fixed")


def _per_angle_mode(raw: dict[str, Any], sources: list[tuple[str, Any]], ctx: Context) -> None:
    scaling = _get(raw, "initial_parameters.per_angle_scaling")[1]
    ours = scaling.get("mode") if isinstance(scaling, Mapping) else None
    if ours == "auto":
        _section(raw, "initial_parameters.per_angle_scaling", ctx)["mode"] = "individual"
        ctx.info("per-angle mode 'auto' (reference package) is read as 'individual': a contrast and offset per angle")
    if ours is not None or not sources:
        for path, _ in sources:
            ctx.ignore(path)
        return
    (path, value), rest = sources[0], sources[1:]
    for other_path, other in rest:
        if other != value:
            ctx.warn(f"'{other_path}' = {other!r} differs from '{path}' = {value!r}; the latter is used")
            ctx.ignore(other_path)
    if value == "fourier":
        raise ctx.error(
            f"'{path}' = 'fourier' (a Fourier series of contrast and offset over angle) is not supported",
            "use individual (a contrast and offset per angle) or averaged",
        )
    if not isinstance(value, str) or value not in _PER_ANGLE:
        raise ctx.error(f"'{path}' = {show(value)} is not a per-angle mode", f"use one of: {', '.join(_PER_ANGLE)}")
    scaling = _section(raw, "initial_parameters.per_angle_scaling", ctx)
    if value == "constant" and (scaling.get("contrast") is None or scaling.get("offset") is None):
        raise ctx.error(
            f"'{path}' = 'constant' needs the per-angle contrast and offset",
            "give initial_parameters.per_angle_scaling.contrast and offset, or use individual",
        )
    scaling["mode"] = _PER_ANGLE[value]
    ctx.info(f"'{path}' = '{value}' (reference package) read as per_angle_scaling.mode '{scaling['mode']}'")
