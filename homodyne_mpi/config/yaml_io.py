"""YAML files: ``load_config`` reads and validates a config (``1e5`` is a number, a duplicate key is an error; one-line
errors for a missing, unreadable, malformed or empty file); ``dump_config`` writes every field, plain lists on one line."""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, check_path
from .context import one_line
from .schema import HomodyneConfig


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that repeats a key (PyYAML would silently keep the last one)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e5`` as a number and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise _DuplicateKey(
                    None, None, f"duplicate key '{key}' (first at line {seen[key].line + 1})", key_node.start_mark
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(path: str | os.PathLike[str]) -> HomodyneConfig:
    """Read and validate a YAML config file; ``ConfigError`` with one line otherwise."""
    source = os.fspath(path)
    file = Path(source).expanduser()
    check_path(
        file,
        ConfigError,
        "config file not found -- check the path, or write one with 'homodyne-mpi init-config --mode static' (or laminar_flow)",
        "is a folder, not a config file -- give the YAML file's path",
        name=source,
    )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}) -- save the config as UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file ({exc.strerror}) -- check its permissions") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc.problem} at line {exc.problem_mark.line + 1} -- keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            one_line(
                f"{source}: malformed YAML{where}: {problem} -- fix the syntax there "
                "(indentation, a missing ':' or space after it, an unclosed quote or bracket)"
            )
        ) from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty -- start from 'homodyne-mpi init-config --mode static' (or laminar_flow)")
    return HomodyneConfig.from_dict(data, source=source)


class _Dumper(yaml.SafeDumper):
    """Block-style sections; lists of plain values on one line (``[D0, alpha]``)."""

    def represent_list(self, data: list[Any]) -> yaml.SequenceNode:
        flat = all(not isinstance(item, (list, dict)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _Dumper.represent_list)


def dump_config(cfg: HomodyneConfig) -> str:
    """YAML text of ``cfg.to_dict()`` (every field, defaults filled in)."""
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
