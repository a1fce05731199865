"""The generic parser and validator: each field's type hint and metadata drive the checks.

``parse(cls, mapping)`` builds a dataclass tree with strict keys (an unknown key is an error naming the nearest one,
or, in a lenient reference-format load, recorded as ignored); ``coerce`` converts one value to a field's type;
``check_tree`` validates a tree (types, ranges, choices, then ``_check`` hooks); ``to_plain`` writes it back as plain data.

Types. Number fields accept numeric strings (``'1e5'``). Integer fields accept integral floats (``1e5`` -> 100000) and
reject others (``2.5``). Booleans must be ``true``/``false``. ``null`` for a field with a default means that default.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Any

import numpy as np

from ..errors import ConfigError
from .context import Context, did_you_mean, format_number, join, pattern, show, suggest_fix, yaml_scalar
from .context import number as as_number


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of dataclass ``cls`` (cached)."""
    return typing.get_type_hints(cls)


def schema_fields(cls: type) -> dict[str, Any]:
    """The fields of ``cls`` a config file sets, by name (internal ones left out)."""
    return {f.name: f for f in fields(cls) if not f.metadata.get("internal")}


def parse(cls: type, raw: Any, path: str, ctx: Context) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``: strict keys, typed values."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ctx.error(
            f"'{path}' must be a mapping (a YAML section of key: value lines), got {show(raw)}",
            f"indent its keys under '{path.rsplit('.', 1)[-1]}:'",
        )
    known, hints = schema_fields(cls), type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ctx.error(f"key {key!r} in '{path or 'the top level'}' is not a name", "use the key names of the template")
        key_path = join(path, key)
        if key in known:
            f = known[key]
            if value is None and not admits_none(hints[key]) and has_default(f):
                continue  # null means the default
            kwargs[key] = coerce(value, hints[key], key_path, ctx, f)
        elif ctx.lenient:
            ctx.ignore(pattern(key_path))
            ctx.nearest[pattern(key_path)] = did_you_mean(key, list(known))
        else:
            raise ctx.error(f"unknown key '{key_path}'", suggest_fix(key, list(known), valid_keys=True))
    for name, f in known.items():
        if name not in kwargs and not has_default(f) and is_dataclass(hints[name]):
            kwargs[name] = parse(hints[name], {}, join(path, name), ctx)  # names the missing leaf
        elif name not in kwargs and not has_default(f):
            example = f" e.g. '{name}: {f.metadata['example']}'" if "example" in f.metadata else ""
            raise ctx.error(f"missing key '{join(path, name)}'", f"add it{example} (see 'homodyne-mpi init-config')")
    return cls(**kwargs)


def has_default(f: Any) -> bool:
    """True when dataclass field ``f`` has a default or a default factory."""
    return f.default is not MISSING or f.default_factory is not MISSING


def admits_none(tp: Any) -> bool:
    """True when type hint ``tp`` is a union with ``None``."""
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def coerce(value: Any, tp: Any, path: str, ctx: Context, f: Any = None, desc: str | None = None) -> Any:
    """Convert ``value`` to type ``tp`` (a field's hint) or raise a one-line ConfigError."""
    meta = f.metadata if f is not None else {}
    if _is_union(tp):
        args = typing.get_args(tp)
        whole = describe(tp, meta)
        if value is None and type(None) in args:
            return None
        if meta.get("auto") and value == "auto":
            return "auto" if str in args else None
        options = [a for a in args if a is not type(None) and not (meta.get("auto") and a is str)]
        lists = [a for a in options if typing.get_origin(a) is list]
        scalars = [a for a in options if typing.get_origin(a) is not list]
        if isinstance(value, (list, tuple)) and lists:
            return coerce(value, lists[0], path, ctx, f)
        if scalars:
            return coerce(value, scalars[0], path, ctx, f, desc=whole)
        if lists and meta.get("one_or_list"):
            return coerce([value], lists[0], path, ctx, f)
        raise type_error(value, whole, path, ctx, f)
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise type_error(value, desc or describe(tp, meta), path, ctx, f)
        return [coerce(item, item_type, join(path, i), ctx) for i, item in enumerate(value)]
    if isinstance(tp, type) and is_dataclass(tp):
        return value if isinstance(value, tp) else parse(tp, value, path, ctx)
    if tp is bool and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if tp is str and isinstance(value, str):
        return value
    number = as_number(value)
    if tp is float and number is not None:
        if not math.isfinite(number):
            raise ctx.error(f"'{path}' must be a finite number, got {show(value)}", "give a finite value")
        return number
    if tp is int and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if tp is int and number is not None and math.isfinite(number) and number == int(number):
        return int(number)
    if tp not in (bool, str, float, int):
        raise TypeError(f"config field type {tp!r} has no parser")  # a bug here, not in the file
    raise type_error(value, desc or describe(tp, meta), path, ctx, f, quote=tp is str)


def describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """Words for a type in messages: 'a number (s) or 'auto'', 'a list of numbers', ..."""
    unit = f" ({meta['unit']})" if meta.get("unit") else ""
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [describe(a, {}) for a in args if a is not type(None) and not (meta.get("auto") and a is str)]
        if meta.get("one_or_list"):
            parts = ["a number", *parts]
        parts[0] += unit
        if meta.get("auto"):
            parts.append("'auto'")
        elif type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        words = {float: "numbers", int: "integers", str: "strings", bool: "booleans"}
        return "a list of " + words.get(item, "mappings")
    if is_dataclass(tp):
        return "a mapping (a YAML section)"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[tp] + unit


def type_error(value: Any, desc: str, path: str, ctx: Context, f: Any, quote: bool = False) -> ConfigError:
    key = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
    if f is not None and f.metadata.get("example"):
        fix = f"write it like '{key}: {f.metadata['example']}'"
    elif f is not None and f.default not in (MISSING, None):
        fix = f"write it like '{key}: {yaml_scalar(f.default)}'"
    elif quote:
        fix = "put the value in quotes"
    else:
        fix = "see 'homodyne-mpi init-config' for an example"
    return ctx.error(f"'{path}' must be {desc}, got {show(value)}", fix)


def check_tree(obj: Any, path: str, ctx: Context) -> None:
    """Validate a dataclass tree: types, field ranges and choices, then ``_check`` hooks."""
    hints = type_hints(obj.__class__)
    for name, f in schema_fields(type(obj)).items():
        value = getattr(obj, name)
        key_path = join(path, name)
        if is_dataclass(hints[name]):
            if not isinstance(value, hints[name]):
                raise ctx.error(f"'{key_path}' must be a {hints[name].__name__}, got {show(value)}", "fix the code")
            check_tree(value, key_path, ctx)
            continue
        item_type = entry_dataclass(hints[name])
        if item_type is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, item_type):
                    raise ctx.error(f"'{key_path}[{i}]' must be a mapping, got {show(item)}", "fix the code")
                check_tree(item, join(key_path, i), ctx)
            continue
        if value is None and not admits_none(hints[name]):
            raise ctx.error(f"'{key_path}' must not be null", "give a value or leave the key out")
        coerce(value, hints[name], key_path, ctx, f)
        _check_range(value, f.metadata, key_path, ctx)
    if hasattr(obj, "_check"):
        obj._check(ctx, path)


def entry_dataclass(tp: Any) -> Any:
    """The dataclass of the entries of a list field (``list[X]`` or ``list[X] | None``), else None."""
    for candidate in typing.get_args(tp) if _is_union(tp) else (tp,):
        if typing.get_origin(candidate) is list:
            item = typing.get_args(candidate)[0]
            return item if isinstance(item, type) and is_dataclass(item) else None
    return None


def _check_range(value: Any, meta: Mapping[str, Any], path: str, ctx: Context) -> None:
    """Apply ``nonempty``, ``choices`` and ``gt``/``ge``/``lt``/``le`` of a field to its value(s)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_range(item, meta, join(path, i), ctx)
        return
    if isinstance(value, str):
        if meta.get("nonempty") and not value.strip():
            raise ctx.error(f"'{path}' is empty", meta["nonempty"])
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ctx.error(
                f"'{path}' = '{value}' is not allowed",
                f"use one of: {', '.join(choices)}" + did_you_mean(value, list(choices)),
            )
        return
    number = as_number(value)
    if number is not None and not all(compare(number, meta[key]) for key, _, compare in _LIMITS if key in meta):
        unit = f" ({meta['unit']})" if meta.get("unit") else ""
        raise ctx.error(f"'{path}' = {value!r} is out of range", f"it must be {limits_text(meta)}{unit}")


_LIMITS = (("gt", ">", operator.gt), ("ge", ">=", operator.ge), ("lt", "<", operator.lt), ("le", "<=", operator.le))


def limits_text(meta: Mapping[str, Any]) -> str:
    """A field's range in words, ``> 0 and <= 1``; ``''`` when it has none."""
    return " and ".join(f"{sign} {format_number(meta[key])}" for key, sign, _ in _LIMITS if key in meta)


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> dicts, lists and scalars; ``dt: None`` is written ``auto``."""
    if is_dataclass(obj):
        return {
            name: "auto" if getattr(obj, name) is None and f.metadata.get("auto") else to_plain(getattr(obj, name))
            for name, f in schema_fields(type(obj)).items()
        }
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return obj
