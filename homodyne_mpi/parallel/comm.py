"""The communicator the rest of the program talks to: MPI or a one-rank serial stand-in.

Every ``mpi4py`` import of the project lives in this package. Large arrays travel as NumPy
buffers (``Scatterv``/``Gatherv`` after their counts), never as pickles.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import HomodyneError, collective

IDLE_POLL_S = 0.005
"""Seconds a waiting rank sleeps between tests of a pending barrier or message (``idle_barrier``)."""

XLA_ALIGNMENT = 64
"""Bytes: XLA's CPU client shares (does not copy) host buffers aligned to this."""


def aligned_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros starting on an ``XLA_ALIGNMENT``-byte boundary: ``jax.device_put`` on the CPU uses them without a copy."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(n_bytes + XLA_ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % XLA_ALIGNMENT
    return raw[offset : offset + n_bytes].view(dtype).reshape(shape)


class Comm:
    """Interface shared by ``MPIComm`` (which overrides every collective) and ``SerialComm`` (this class as
    it is: the collectives of one rank), so a single-rank run is the same code as an MPI run."""

    rank: int = 0
    size: int = 1

    @property
    def host(self) -> str:
        """Name of the machine this rank runs on."""
        return socket.gethostname()

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that reads files and writes results."""
        return self.rank == 0

    def describe(self) -> str:
        """``rank r of n on host`` for messages."""
        return f"rank {self.rank} of {self.size} on {self.host}"

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, dtype=np.float64, copy=True)

    def scatter_rows(
        self, array: np.ndarray | None, counts: Sequence[int] | np.ndarray, root: int = 0, capacity: int | None = None
    ) -> np.ndarray:
        """Rank ``r`` gets the next ``counts[r]`` rows of the root's ``array``; with ``capacity``, in ``max(capacity,
        counts[r])`` rows, zeros after the received ones, of a buffer JAX uses without a copy (``aligned_zeros``)."""
        if array is None or len(counts) != 1 or counts[0] != len(array):
            raise ValueError("SerialComm.scatter_rows needs counts == [len(array)]")
        if capacity is None or capacity <= len(array):
            return np.ascontiguousarray(array)
        local = aligned_zeros((capacity, *np.shape(array)[1:]), np.asarray(array).dtype)
        local[: len(array)] = array
        return local

    def gather_rows(self, array: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Every rank's rows, concatenated in rank order, on the root (``None`` elsewhere)."""
        return np.ascontiguousarray(array)

    def allgather_rows(self, array: np.ndarray) -> np.ndarray:
        """Every rank's rows, concatenated in rank order, on every rank."""
        return np.array(array, copy=True)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return [obj]

    def barrier(self) -> None:
        return None

    def idle_barrier(self, poll_s: float = IDLE_POLL_S) -> None:
        """A barrier that sleeps while it waits (``poll_s`` between tests), for ranks that may wait
        long for another (the root sampling a shard, writing results): MPI's blocking calls spin a
        core, which on a shared or oversubscribed node slows the rank being waited for."""
        return None

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def split(self, color: int) -> Comm:
        """A sub-communicator of the ranks that pass the same ``color`` (collective); one rank: itself."""
        return self

    def sum_in_chunk_order(
        self, rows: np.ndarray, first_chunk: int, n_chunks: int, flag: float = 0.0
    ) -> tuple[np.ndarray, float]:
        """Sum of every rank's per-chunk rows ``(n_local, L)`` (chunks ``first_chunk, ...`` of ``n_chunks``), added
        on one fixed tree over chunk indices: the same bits on any number of ranks (``chunk_order``; one
        ``Allgatherv`` of each rank's ``local_cover``). ``flag`` (a stop request) is summed alongside, returned second.
        """
        from .chunk_order import combine_cover, local_cover

        rows = np.asarray(rows, dtype=np.float64)
        cover = local_cover(rows, first_chunk, n_chunks)
        packed = np.zeros((len(cover) + 1, rows.shape[1] + 2))
        packed[0, :3] = (-1.0, 0.0, flag)
        for row, (level, index, value) in enumerate(cover, start=1):
            packed[row, :2] = (level, index)
            packed[row, 2:] = value
        everything = self.allgather_rows(packed)
        header = everything[:, 0] < 0
        nodes = {(int(row[0]), int(row[1])): row[2:] for row in everything[~header]}
        return combine_cover(nodes, n_chunks), float(everything[header, 2].sum())

    def run_on_root(self, fn: Callable[[], Any], root: int = 0) -> Any:
        """Run ``fn`` on the root only and give its value to every rank.

        A ``HomodyneError`` raised there is re-raised on every rank, marked ``collective``, so all
        ranks exit with its code together instead of leaving the others blocked in the next collective.
        """
        outcome: tuple[bool, Any] | None = None
        if self.rank == root:
            try:
                outcome = (True, fn())
            except HomodyneError as error:
                outcome = (False, error)
        self.idle_barrier()  # the other ranks sleep, not spin, while the root works
        ok, value = self.bcast(outcome, root=root)
        if not ok:
            raise collective(value)
        return value


class SerialComm(Comm):
    """One process, no MPI: every collective is the identity (``Comm``'s own)."""


def item_layout(counts, trailing: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Items per rank and their offsets for a ``*v`` collective of rows of shape ``trailing``."""
    row_items = int(np.prod(trailing, dtype=np.int64)) if trailing else 1
    item_counts = np.array(counts, dtype=np.int64) * row_items
    return item_counts, np.concatenate([[0], np.cumsum(item_counts)[:-1]])


class MPIComm(Comm):
    """Thin wrapper over an ``mpi4py`` communicator (``COMM_WORLD`` by default)."""

    def __init__(self, mpi_comm=None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self._comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    @property
    def raw(self):
        """The underlying ``mpi4py`` communicator (for code inside ``parallel/`` only)."""
        return self._comm

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._comm.bcast(obj, root=root)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        send = np.ascontiguousarray(array, dtype=np.float64)
        receive = np.empty_like(send)
        self._comm.Allreduce(send, receive, op=self._MPI.SUM)
        return receive

    def scatter_rows(self, array, counts, root: int = 0, capacity: int | None = None) -> np.ndarray:
        """``Comm.scatter_rows``; only the root needs ``array`` (dtype and trailing shape are broadcast first)."""
        counts = [int(c) for c in counts]
        if len(counts) != self.size:
            raise ValueError(f"scatter_rows needs {self.size} counts, got {len(counts)}")
        meta = None
        if self.rank == root:
            array = np.ascontiguousarray(array)
            if array.shape[0] != sum(counts):
                raise ValueError("scatter_rows: counts do not add up to the number of rows")
            meta = (array.dtype.str, array.shape[1:])
        dtype_str, trailing = self._comm.bcast(meta, root=root)
        local = aligned_zeros((max(counts[self.rank], int(capacity or 0)), *trailing), np.dtype(dtype_str))
        send = [array, item_layout(counts, trailing), self._MPI._typedict[local.dtype.char]] if self.rank == root else None
        self._comm.Scatterv(send, self._typed(local[: counts[self.rank]]), root=root)
        return local

    def _typed(self, array: np.ndarray) -> list:
        """``[array, its MPI datatype]``, a buffer argument of the ``*v`` collectives."""
        return [array, self._MPI._typedict[array.dtype.char]]

    def _receive_rows(self, counts, like: np.ndarray) -> tuple[np.ndarray, list]:
        """A buffer for ``sum(counts)`` rows shaped like those of ``like``, and its ``*v`` receive argument."""
        result = np.empty((sum(counts), *like.shape[1:]), dtype=like.dtype)
        return result, [result, item_layout(counts, like.shape[1:]), self._MPI._typedict[like.dtype.char]]

    def gather_rows(self, array: np.ndarray, root: int = 0) -> np.ndarray | None:
        array = np.ascontiguousarray(array)
        counts = self._comm.gather(array.shape[0], root=root)
        result, receive = self._receive_rows(counts, array) if self.rank == root else (None, None)
        self._comm.Gatherv(self._typed(array), receive, root=root)
        return result

    def allgather_rows(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        result, receive = self._receive_rows(self._comm.allgather(array.shape[0]), array)
        self._comm.Allgatherv(self._typed(array), receive)
        return result

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return self._comm.gather(obj, root=root)

    def barrier(self) -> None:
        self._comm.Barrier()

    def idle_barrier(self, poll_s: float = IDLE_POLL_S) -> None:
        request = self._comm.Ibarrier()
        while not request.Test():
            time.sleep(poll_s)

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    def split(self, color: int) -> MPIComm:
        return MPIComm(self._comm.Split(color, self.rank))


LAUNCHER_SIZE_KEYS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
"""Variables in which a launcher announces how many processes it started."""


def launcher_size(environ: Mapping[str, str]) -> tuple[str, int]:
    """``(variable, size)`` announced by an MPI launcher, read without importing MPI; ``("", 0)``: none."""
    for key in LAUNCHER_SIZE_KEYS:
        value = environ.get(key, "").strip()
        if value.isdigit() and int(value):
            return key, int(value)
    return "", 0


def get_comm(*, use_mpi: bool | None = None) -> Comm:
    """``MPIComm`` when launched by an MPI launcher (or ``HOMODYNE_MPI=1``), else ``SerialComm`` (``HOMODYNE_MPI=0``);
    without a launcher environment MPI is never imported: a laptop without MPI still runs."""
    if use_mpi is None:
        forced = os.environ.get("HOMODYNE_MPI", "").strip().lower()
        if forced in ("0", "1", "true", "false", "yes", "no"):
            use_mpi = forced in ("1", "true", "yes")
        else:
            use_mpi = launcher_size(os.environ)[1] > 0
    return MPIComm() if use_mpi else SerialComm()
