"""Exception types that the command line maps to exit codes.

``InputError`` and ``ConfigError`` (exit code 2): unusable user input, in a one-line message
naming what, where and the fix. ``Interrupted`` (exit code 3): a signal stopped the run after checkpointing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar


class HomodyneError(Exception):
    """Base class of the errors this program raises on purpose."""

    exit_code = 1
    collective = False
    """True when every rank raises it together (``parallel.entry.run_guarded`` then ends each
    rank with ``exit_code`` instead of aborting the job)."""


class InputError(HomodyneError):
    """Bad input data: a missing file or key, a wrong shape, non-finite values."""

    exit_code = 2


class ConfigError(HomodyneError):
    """A config that cannot be used: malformed YAML, unknown key, wrong type or value."""

    exit_code = 2


class FitError(HomodyneError):
    """A fit that cannot produce a result (for example too few good CMC shards)."""


class Interrupted(HomodyneError):
    """The run was asked to stop by a signal; finished work was checkpointed."""

    exit_code = 3


_E = TypeVar("_E", bound=HomodyneError)


def collective(error: _E) -> _E:
    """``error``, marked as raised on every rank together (``parallel.entry`` then exits cleanly)."""
    error.collective = True
    return error


def check_path(
    path: Path, error: type[HomodyneError], missing: str, wrong_kind: str, *, folder: bool = False, name: str | None = None
) -> None:
    """Raise ``error("<name>: <missing>")`` when ``path`` does not exist, ``error("<name>: <wrong_kind>")`` when it is a
    folder (with ``folder=True``: when it is not one); ``name`` defaults to the path."""
    name = str(path) if name is None else name
    if not path.exists():
        raise error(f"{name}: {missing}")
    if path.is_dir() != folder:
        raise error(f"{name}: {wrong_kind}")
