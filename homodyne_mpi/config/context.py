"""What a config field may hold (``option()``) and how problems are reported: :class:`Context` holds one load's source
name and what it noticed (ignored keys, notes, warnings); the helpers below write the one-line messages."""

from __future__ import annotations

import difflib
import logging
import numbers
import re
from collections.abc import Mapping
from dataclasses import MISSING, field
from typing import Any

import numpy as np
import yaml

from ..errors import ConfigError

logger = logging.getLogger("homodyne_mpi.config")


_CHECKS = frozenset(("choices", "gt", "ge", "lt", "le", "unit", "auto", "one_or_list", "example", "nonempty"))


def option(default: Any = MISSING, *, factory: Any = MISSING, **checks: Any) -> Any:
    """A dataclass field with the checks the generic parser and validator apply.

    ``choices``: allowed strings; ``gt``/``ge``/``lt``/``le``: range of a number (and of each number of a list);
    ``unit``: shown in messages and in the template; ``auto=True``: the YAML string ``'auto'`` is accepted (it becomes
    ``None`` for an optional number, stays ``'auto'`` for an ``int | str`` field); ``one_or_list=True``: a single value
    is read as a one-element list; ``example``: a value shown in type errors and written by the template when the field
    has no default; ``nonempty``: a blank string is an error whose fix is this text.
    """
    if not checks.keys() <= _CHECKS:
        raise TypeError(f"option() has no check(s) {sorted(checks.keys() - _CHECKS)}")
    if factory is not MISSING:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


class Context:
    """What one parse or validation run knows: the source name and what it noticed."""

    def __init__(self, source: str | None) -> None:
        self.source = source or "config"
        self.ignored: list[str] = []
        self.infos: dict[str, None] = {}  # ordered sets: each note once
        self.warnings: dict[str, None] = {}
        self.fixed_values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # moved key's path here -> path in the file
        self.lenient = False  # a reference-format config: unknown keys are ignored, not errors
        self.nearest: dict[str, str] = {}  # ignored key -> " (did you mean 'x'?)" or ""

    def where(self, path: str) -> str:
        """The path the user wrote for ``path`` (differs for keys moved from elsewhere)."""
        for moved, original in self.origin.items():
            if path == moved or path.startswith((moved + ".", moved + "[")):
                return original + path[len(moved) :]
        return path

    def error(self, what: str, fix: str) -> ConfigError:
        """A one-line ``ConfigError``: ``SOURCE: what -- fix``."""
        return ConfigError(one_line(f"{self.source}: {what} -- {fix}"))

    def ignore(self, path: str) -> None:
        """Record a reference-package key that is not used (pattern path, ``[]`` for indices)."""
        path = self.where(path)
        if path not in self.ignored:
            self.ignored.append(path)

    def info(self, message: str) -> None:
        self.infos[message] = None

    def warn(self, message: str) -> None:
        self.warnings[message] = None

    def flush_log(self) -> None:
        """Log what was mapped and ignored: each note once, the ignored keys in one line."""
        for message in self.infos:
            logger.info("%s: %s", self.source, message)
        for message in self.warnings:
            logger.warning("%s: %s", self.source, message)
        self.ignored.sort()
        if self.ignored:
            unused = "key(s) of the reference homodyne package that homodyne_mpi does not use"
            logger.info("%s: ignoring %d %s: %s", self.source, len(self.ignored), unused, ", ".join(self.ignored))


def join(path: str, key: str | int) -> str:
    """``path.key``, or ``path[key]`` for a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def pattern(path: str) -> str:
    """A key path with every list index written ``[]``."""
    return re.sub(r"\[\d+\]", "[]", path)


def did_you_mean(word: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest candidate, or ``''``."""
    matches = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def suggest_fix(word: str, candidates: list[str], valid_keys: bool = False) -> str:
    """The fix part of a message for an unknown name: the nearest one, else the list."""
    label = "valid keys here" if valid_keys else "valid names"
    return did_you_mean(word, candidates).strip(" ()") or f"{label}: {', '.join(candidates)}"


def number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a numeric string, else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace("_", ""))
    return None


_NUMBER = re.compile(r"[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?")


def show(value: Any) -> str:
    """A value and its kind for messages: ``'abc' (a string)``, ``null``."""
    kinds = {bool: "a boolean", str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}
    if value is None:
        return "null"
    kind = kinds.get(type(value)) or ("a mapping" if isinstance(value, Mapping) else None)
    if kind is None:
        kind = "a number" if number(value) is not None else type(value).__name__
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def yaml_scalar(value: Any) -> str:
    """``value`` as it is written in YAML on one line."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def format_number(x: float) -> str:
    """``3`` for integral numbers, else ``%g``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())
