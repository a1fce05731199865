"""Rank-0 input and output: prefetching the next data set, and atomic background writes.

- :class:`PrefetchLoader` loads item k+1 of a batch in a background thread while the
  caller works on item k, yielding :class:`Loaded` records in order.
- :class:`AsyncWriter` writes result files in background threads; every write is atomic
  (temporary file beside the target, fsync, rename) and failures raise :class:`WriteError`.
- ``atomic_write_*`` are the same atomic writes, synchronous.

Nothing here imports MPI or JAX.
"""

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
