"""Write result files in background threads, atomically, and fail loudly if any write fails.

:class:`AsyncWriter` takes result files (JSON, ``.npz``, HDF5, bytes, or what a function writes, such as
a PNG) off rank 0's path. Every write is atomic (:mod:`homodyne_mpi.io.atomic`) and no failure is lost:
:meth:`AsyncWriter.wait_all` returns them, ``raise_if_failed`` and leaving the ``with`` block raise
:class:`WriteError` naming every failed path.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from homodyne_mpi.errors import HomodyneError
from homodyne_mpi.io.atomic import atomic_write_bytes, atomic_write_call, atomic_write_hdf5, atomic_write_npz, encode_json

log = logging.getLogger(__name__)

_PRUNE_AT = 256
"""Forget finished futures once this many are tracked, so a long batch stays small."""


@dataclass(frozen=True)
class WriteFailure:
    """One write that failed: where, what kind, and why."""

    path: Path
    """Absolute path of the target file that was not written."""
    kind: str
    """``"json"``, ``"npz"``, ``"hdf5"``, ``"bytes"`` or ``"call"``."""
    error: BaseException
    """The exception the write raised."""
    traceback: str
    """The formatted traceback of ``error``, from the writer thread."""

    def describe(self) -> str:
        """One line: the path, the kind of write, and the error."""
        return f"{self.path} ({self.kind}): {type(self.error).__name__}: {self.error}"


class WriteError(HomodyneError):
    """One or more result files could not be written (exit code 1)."""

    exit_code = 1

    def __init__(self, failures: list[WriteFailure]) -> None:
        self.failures = list(failures)
        count = len(self.failures)
        lines = "; ".join(failure.describe() for failure in self.failures)
        super().__init__(f"{count} result file {'write' if count == 1 else 'writes'} failed: {lines}")


def _copy_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Snapshot array-likes as fresh NumPy arrays, so the caller may mutate its own."""
    return {name: np.array(value, copy=True) for name, value in arrays.items()}


class AsyncWriter:
    """``max_workers`` (>= 1) threads that write result files atomically, in submission order per path.
    ``submit_*`` return a :class:`~concurrent.futures.Future` of the absolute target path at once, their
    data snapshotted (except :meth:`submit_call`'s); failures are logged and kept."""

    def __init__(self, max_workers: int = 2) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="homodyne-writer")
        self._lock = threading.Lock()
        self._pending: set[Future[Path]] = set()
        self._last_by_path: dict[Path, Future[Path]] = {}
        self._failures: list[WriteFailure] = []
        self._submitted = 0
        self._completed = 0
        self._shut_down = False

    def submit_json(self, path: str | os.PathLike[str], obj: Any) -> Future[Path]:
        """Write ``obj`` as JSON (NumPy types converted, NaN kept) to ``path``; encoded now, so a
        :class:`TypeError` is raised here and later changes to ``obj`` do not reach the file."""
        return self._submit(path, "json", atomic_write_bytes, encode_json(obj))

    def submit_npz(self, path: str | os.PathLike[str], /, **arrays: Any) -> Future[Path]:
        """Write ``arrays`` (copied now) as an uncompressed ``.npz`` archive to exactly ``path``."""
        return self._submit(path, "npz", atomic_write_npz, **_copy_arrays(arrays))

    def submit_hdf5(
        self, path: str | os.PathLike[str], datasets: Mapping[str, Any], attrs: Mapping[str, Any] | None = None
    ) -> Future[Path]:
        """Write ``datasets`` (copied now; ``"a/b"`` names create groups) and root ``attrs`` as HDF5."""
        attrs_copy = copy.deepcopy(dict(attrs)) if attrs else None
        return self._submit(path, "hdf5", atomic_write_hdf5, _copy_arrays(datasets), attrs_copy)

    def submit_bytes(self, path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Future[Path]:
        """Write the raw bytes ``data`` (copied now) to ``path``."""
        return self._submit(path, "bytes", atomic_write_bytes, bytes(data))

    def submit_call(self, path: str | os.PathLike[str], fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Path]:
        """Write ``path`` by calling ``fn(temp_path, *args, **kwargs)`` (the temporary name keeps the extension)
        in a writer thread; ``args`` and ``kwargs`` are NOT copied: leave them alone until the future is done."""
        return self._submit(path, "call", atomic_write_call, fn, *args, **kwargs)

    def _submit(
        self, path: str | os.PathLike[str], kind: str, write: Callable[..., Path], /, *args: Any, **kwargs: Any
    ) -> Future[Path]:
        """Queue one write, ordered after any pending write to the same path."""
        target = Path(os.path.abspath(os.fspath(path)))
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"AsyncWriter is shut down; cannot write {target}")
            previous = self._last_by_path.get(target)
            if previous is not None and previous.done():
                previous = None
            future = self._executor.submit(self._run_write, target, kind, previous, write, args, kwargs)
            if len(self._pending) >= _PRUNE_AT:
                self._pending = {pending for pending in self._pending if not pending.done()}
            self._pending.add(future)
            self._last_by_path[target] = future
            self._submitted += 1
        return future

    def _run_write(
        self, target: Path, kind: str, previous: Future[Path] | None, write: Callable[..., Path], args: tuple, kwargs: dict
    ) -> Path:
        """Writer thread: wait for an earlier write to the same path, write, record the outcome."""
        if previous is not None:
            wait_futures([previous])
        start = time.perf_counter()
        try:
            result = write(target, *args, **kwargs)
        except BaseException as error:
            failure = WriteFailure(target, kind, error, traceback.format_exc())
            log.error("writing %s failed: %s: %s", target, type(error).__name__, error)
            with self._lock:
                self._failures.append(failure)
            raise
        log.debug("wrote %s (%s) in %.3f s", target, kind, time.perf_counter() - start)
        with self._lock:
            self._completed += 1
        return result

    @property
    def pending(self) -> int:
        """Number of submitted writes that have not finished yet."""
        with self._lock:
            return sum(1 for future in self._pending if not future.done())

    @property
    def submitted(self) -> int:
        """Number of writes submitted so far."""
        return self._submitted

    @property
    def completed(self) -> int:
        """Number of writes that finished successfully."""
        return self._completed

    @property
    def failures(self) -> list[WriteFailure]:
        """A copy of the failed writes recorded so far, in the order they failed."""
        with self._lock:
            return list(self._failures)

    def wait_all(self, timeout: float | None = None) -> list[WriteFailure]:
        """Block until every write submitted so far has finished; return every failure since the start
        (:class:`TimeoutError` if writes are still running after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._pending = {future for future in self._pending if not future.done()}
                self._last_by_path = {target: future for target, future in self._last_by_path.items() if not future.done()}
                waiting = list(self._pending)
            if not waiting:
                return self.failures
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = wait_futures(waiting, timeout=remaining)
            if not_done and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(not_done)} result file writes still running after {timeout} s")

    def raise_if_failed(self) -> None:
        """Raise :class:`WriteError` naming every failed write so far; do nothing if none failed."""
        if failures := self.failures:
            raise WriteError(failures)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new writes and release the threads; with ``wait``, first finish queued writes
        (never cancelled: with ``wait=False`` they complete in the background). Idempotent."""
        with self._lock:
            self._shut_down = True
        self._executor.shutdown(wait=wait)

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Wait for every write, shut down, and raise :class:`WriteError` if any failed (only logged
        if the ``with`` block is already raising, so as not to mask its exception)."""
        try:
            self.wait_all()
        finally:
            self.shutdown(wait=True)
        failures = self.failures
        if failures and exc_type is None:
            raise WriteError(failures)
        if failures:
            described = "; ".join(failure.describe() for failure in failures)
            log.error("%d result file writes failed while another error was being raised: %s", len(failures), described)
