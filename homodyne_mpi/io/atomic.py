"""Atomic result files: write a temporary file beside the target, then rename it into place.

Every function here writes to a fresh temporary file in the same folder as the target
(named ``.<stem>.tmp-<random><suffix>``, so tools that look at the extension, such as
matplotlib, still see the right one), flushes and fsyncs it, and then moves it over the
target with :func:`os.replace`, which is atomic on POSIX file systems. A reader therefore
sees either the old file or the complete new one, never a partial file. On any failure
the temporary file is removed and the exception propagates; the target is left untouched.
Missing parent folders are created.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

_TEMP_MARKER = ".tmp-"
_CREATE_ATTEMPTS = 16


def _create_temp_file(target: Path) -> Path:
    """Create an empty, exclusive temporary file next to ``target`` and return its path.

    The file is created with mode 0o666 filtered by the process umask, like a normal
    ``open(..., "w")``, so the renamed result has ordinary permissions.
    """
    for _ in range(_CREATE_ATTEMPTS):
        temp = target.with_name(f".{target.stem}{_TEMP_MARKER}{secrets.token_hex(6)}{target.suffix}")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"could not create a unique temporary file next to {target}")


def _fsync(path: Path, flags: int) -> None:
    """Flush ``path`` (a file, or a folder after a rename in it) to stable storage."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_call(
    path: str | os.PathLike[str],
    write_fn: Callable[..., Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> Path:
    """Write ``path`` atomically by calling ``write_fn(temp_path, *args, **kwargs)``.

    ``write_fn`` must create the complete file at the temporary path it is given (it may
    overwrite the empty file that is already there), for example
    ``lambda tmp: fig.savefig(tmp, format="png")``. Its return value is ignored. Returns the
    target path as an absolute :class:`~pathlib.Path`.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp_file(target)
    try:
        write_fn(temp, *args, **kwargs)
        _fsync(temp, os.O_RDWR)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # skipped where folders cannot be fsynced
        _fsync(target.parent, os.O_RDONLY)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write the raw bytes ``data`` to ``path`` atomically; return the absolute target path."""
    return atomic_write_call(path, Path.write_bytes, data)


def to_jsonable(obj: Any) -> Any:
    """Return a copy of ``obj`` built only from types :mod:`json` can encode.

    NumPy scalars become Python scalars, arrays (and objects with ``__array__``, such as
    JAX arrays) become nested lists, tuples become lists, paths become strings, and
    mapping keys that are NumPy scalars become Python scalars. Non-finite floats are kept
    as ``nan``/``inf`` (see :func:`encode_json`). Raises :class:`TypeError` naming the
    offending type for anything else.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, np.generic):
                key = key.item()
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"JSON object keys must be str, int, float or bool, got {type(key).__name__}")
            out[key] = to_jsonable(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        array = np.asarray(obj)
        if array.dtype == object:
            return [to_jsonable(value) for value in array.tolist()]
        return array.tolist()
    raise TypeError(f"object of type {type(obj).__name__} cannot be written as JSON")


def encode_json(obj: Any) -> bytes:
    """Encode ``obj`` as UTF-8 JSON text: indent 2, keys in insertion order, trailing newline.

    NumPy types are converted with :func:`to_jsonable`. Non-finite floats are written as
    ``NaN``, ``Infinity`` and ``-Infinity`` (Python's ``allow_nan=True``), which
    :func:`json.load` reads back; strict JSON parsers in other languages may reject them.
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=True)
    return (text + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON (see :func:`encode_json`) to ``path`` atomically.

    The object is encoded before anything touches the disk, so an object that cannot be
    encoded raises :class:`TypeError` and leaves no file behind.
    """
    return atomic_write_bytes(path, encode_json(obj))


def atomic_write_npz(path: str | os.PathLike[str], /, **arrays: Any) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` archive to exactly ``path``, atomically.

    Unlike :func:`numpy.savez`, no ``.npz`` extension is appended to ``path``. Object
    arrays are refused (they would need pickling to read back).
    """
    converted = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in converted.items():
        if array.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which .npz cannot store without pickle")

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            # allow_pickle named explicitly: nothing here needs pickle (object arrays are
            # refused above), and an array called "allow_pickle" can no longer be taken
            # for the flag and silently dropped from the archive.
            np.savez(handle, allow_pickle=False, **converted)

    return atomic_write_call(path, write)


def _hdf5_attr_value(name: str, value: Any) -> Any:
    """Check and convert one attribute value for h5py; refuse ``None`` with a clear error."""
    if value is None:
        raise TypeError(f"HDF5 attribute {name!r} is None, which HDF5 cannot store")
    if isinstance(value, float) and not math.isfinite(value):
        return np.float64(value)
    return value


def atomic_write_hdf5(
    path: str | os.PathLike[str],
    datasets: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write an HDF5 file with the given datasets and root attributes to ``path`` atomically.

    ``datasets`` maps a name to an array-like; a name with ``/`` (``"fit/c2"``) creates
    the intermediate groups. ``attrs`` become attributes of the file's root group
    (strings, numbers and arrays; ``None`` is refused). Returns the absolute target path.
    """
    converted = {name.strip("/"): np.asarray(value) for name, value in datasets.items()}
    for name in converted:
        if not name:
            raise ValueError("HDF5 dataset names must not be empty")
    root_attrs = {name: _hdf5_attr_value(name, value) for name, value in (attrs or {}).items()}

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as handle:
            for name, array in converted.items():
                handle.create_dataset(name, data=array)
            for name, value in root_attrs.items():
                handle.attrs[name] = value

    return atomic_write_call(path, write)
