"""Atomic result files: write a temporary file beside the target, then rename it into place.

``.<stem>.tmp-<random><suffix>`` (keeping the extension tools such as matplotlib look at) is written,
fsynced and moved over the target with :func:`os.replace`, atomic on POSIX: a reader sees the old file or
the complete new one. On failure it is removed, the exception propagates and the target is untouched.
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
    """Create an empty, exclusive temporary file next to ``target`` (mode 0o666 less the umask, as
    ``open(..., "w")``, so the result has ordinary permissions) and return its path."""
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


def atomic_write_call(path: str | os.PathLike[str], write_fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Path:
    """Write ``path`` atomically by calling ``write_fn(temp_path, *args, **kwargs)``, which creates the
    complete file at the (existing, empty) temporary path; return the absolute target."""
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
    """A copy of ``obj`` built only from types :mod:`json` can encode (NumPy scalars as Python ones, arrays
    and tuples as lists, paths as strings, non-finite floats kept), or :class:`TypeError` naming the type."""
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
        return [to_jsonable(value) for value in array.tolist()] if array.dtype == object else array.tolist()
    raise TypeError(f"object of type {type(obj).__name__} cannot be written as JSON")


def encode_json(obj: Any) -> bytes:
    """``obj`` (through :func:`to_jsonable`) as UTF-8 JSON: indent 2, insertion order, trailing newline;
    non-finite floats as ``NaN``/``Infinity``, which :func:`json.load` reads (strict parsers may not)."""
    return (json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=True) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON (:func:`encode_json`) to ``path`` atomically; encoded first, so a
    :class:`TypeError` leaves no file."""
    return atomic_write_bytes(path, encode_json(obj))


def atomic_write_npz(path: str | os.PathLike[str], /, **arrays: Any) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` archive to exactly ``path`` (no extension
    appended), atomically. Object arrays are refused (they would need pickle to read back)."""
    converted = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in converted.items():
        if array.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which .npz cannot store without pickle")

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            # allow_pickle named, so that an array called "allow_pickle" is not taken for the flag
            np.savez(handle, allow_pickle=False, **converted)

    return atomic_write_call(path, write)


def _hdf5_attr_value(name: str, value: Any) -> Any:
    """Check and convert one attribute value for h5py; refuse ``None`` with a clear error."""
    if value is None:
        raise TypeError(f"HDF5 attribute {name!r} is None, which HDF5 cannot store")
    if isinstance(value, float) and not math.isfinite(value):
        return np.float64(value)
    return value


def atomic_write_hdf5(path: str | os.PathLike[str], datasets: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> Path:
    """Write an HDF5 file of ``datasets`` (``"fit/c2"`` creates the group ``fit``) and root
    ``attrs`` (strings, numbers, arrays; not ``None``) to ``path`` atomically; return the absolute path."""
    converted = {name.strip("/"): np.asarray(value) for name, value in datasets.items()}
    if "" in converted:
        raise ValueError("HDF5 dataset names must not be empty")
    root_attrs = {name: _hdf5_attr_value(name, value) for name, value in (attrs or {}).items()}

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as handle:
            for name, array in converted.items():
                handle.create_dataset(name, data=array)
            for name, value in root_attrs.items():
                handle.attrs[name] = value

    return atomic_write_call(path, write)
