"""Rank-0 input and output, without MPI or JAX: :class:`PrefetchLoader` loads the next item of a
batch in a background thread; :class:`AsyncWriter` writes result files in background threads,
atomically (``atomic_write_*`` synchronously), failures raising :class:`WriteError`."""

from homodyne_mpi.io.atomic import atomic_write_bytes, atomic_write_call, atomic_write_hdf5, atomic_write_json, atomic_write_npz
from homodyne_mpi.io.prefetch import Loaded, PrefetchLoader
from homodyne_mpi.io.writer import AsyncWriter, WriteError

__all__ = [
    "AsyncWriter",
    "Loaded",
    "PrefetchLoader",
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_call",
    "atomic_write_hdf5",
    "atomic_write_json",
    "atomic_write_npz",
]
