"""Memory a long batch releases between data sets: compiled JAX kernels and freed heap.

Every compiled kernel holds memory maps (Linux: lines of ``/proc/self/maps``) until JAX forgets it.
The NLSQ kernels are module-level ``jax.jit`` functions whose static ``KernelSetup``/``ModelSpec``
holds ``q``, ``dt`` and the frame count, so each data set of a batch (one per q bin, say) compiles
its own copies, and JAX's caches (thousands of entries) keep every copy: a single-process batch of
small static data sets gains about 320 maps per data set. A process dies ("LLVM compilation error:
Cannot allocate memory") when it passes ``vm.max_map_count`` (65,530 by default), after about 200
such data sets (CMC: about 3,150 maps per data set, fatal after about 20). The batch calls
``jax.clear_caches()`` (``release_compiled_kernels``) after a data set that ran CMC and whenever the
count passes a limit (``over_limit``); the next data set compiles what it needs again (from the
persistent compilation cache when ``compute.compilation_cache_dir`` is set).

Memory that a data set freed stays in the process too: glibc's allocator keeps freed heap
pages, and a single-process batch of small CMC data sets grew from 890 to 1,530 MB resident over
16 data sets with nothing alive to account for it (one ``malloc_trim(0)`` at the end brought it
to 406 MB). ``return_freed_heap_if_grown`` hands those pages back between data sets once the
resident set has grown ``HEAP_TRIM_GROWTH_MB`` since the last time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

HEAP_TRIM_GROWTH_MB = 100.0
"""Growth of the resident set (MB) since the last heap trim that makes the next data set's end trim again."""

DEFAULT_MAX_MAP_COUNT = 65530
"""Linux's default ``vm.max_map_count``: used where ``/proc/sys/vm/max_map_count`` cannot be read."""


def memory_map_count() -> int | None:
    """Memory maps of this process (lines of ``/proc/self/maps``); None where that file does not exist."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def max_map_count() -> int:
    """The kernel's limit on one process's memory maps (``vm.max_map_count``)."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read().strip())
    except (OSError, ValueError):
        return DEFAULT_MAX_MAP_COUNT


MAPS_LIMIT_CAP = 16384
"""Largest default ``maps_limit``: about 50 small NLSQ data sets' kernels (about 325 maps and 23 MB resident
each, measured), so the kernels a batch keeps stay near 1 GB per process."""


def default_maps_limit() -> int:
    """Maps above which compiled kernels are dropped: half of ``vm.max_map_count`` (leaving the other half to
    the next data set's compilations and everything else in the process), at most ``MAPS_LIMIT_CAP``."""
    return min(max_map_count() // 2, MAPS_LIMIT_CAP)


def over_limit(limit: int | None = None) -> bool:
    """True if this process holds more than ``limit`` memory maps (None: ``default_maps_limit()``); False where
    the count cannot be read."""
    count = memory_map_count()
    return count is not None and count > (default_maps_limit() if limit is None else limit)


def release_compiled_kernels() -> None:
    """``jax.clear_caches()``: every kernel compiled so far is freed once nothing else holds it. Call it between
    data sets, with no kernel running or compiling in another thread."""
    import jax

    before = memory_map_count()
    jax.clear_caches()
    gc.collect()
    log.info("dropped JAX's compiled kernels: %s memory maps before, %s after", before, memory_map_count())


def _libc_malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def resident_megabytes() -> float | None:
    """This process's resident set (``VmRSS`` of ``/proc/self/status``), MB; None where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def return_freed_heap() -> bool:
    """``gc.collect()``, then ``malloc_trim(0)``: the heap pages freed so far go back to the system (glibc
    only); True if the C library has ``malloc_trim``. Call it between data sets."""
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def return_freed_heap_if_grown(floor_mb: float | None, growth_mb: float = HEAP_TRIM_GROWTH_MB) -> float | None:
    """``return_freed_heap`` when the resident set exceeds ``floor_mb`` (the level after the last trim; None:
    never trimmed) by more than ``growth_mb``; returns the new floor (the level after trimming, or
    ``floor_mb`` unchanged). Where the resident set cannot be read, nothing is done."""
    resident = resident_megabytes()
    if resident is None or (floor_mb is not None and resident <= floor_mb + growth_mb):
        return floor_mb
    if not return_freed_heap():
        return resident
    after = resident_megabytes()
    log.debug("returned freed heap: resident %.0f MB before, %s MB after", resident, f"{after:.0f}" if after else "?")
    return after
