"""Compiled JAX kernels in a long batch: dropped between data sets before they exhaust the memory maps.

Every compiled kernel holds memory maps (Linux: lines of ``/proc/self/maps``) until JAX forgets it.
The NLSQ kernels are module-level ``jax.jit`` functions whose static ``KernelSetup``/``ModelSpec``
holds ``q``, ``dt`` and the frame count, so each data set of a batch (one per q bin, say) compiles
its own copies, and JAX's caches (thousands of entries) keep every copy: a single-process batch of
small static data sets gains about 320 maps per data set. A process dies ("LLVM compilation error:
Cannot allocate memory") when it passes ``vm.max_map_count`` (65,530 by default), after about 200
such data sets. The batch calls ``jax.clear_caches()`` between data sets once the count passes a
limit (``over_limit``, ``release_compiled_kernels``); the next data set compiles what it needs again
(from the persistent compilation cache when ``compute.compilation_cache_dir`` is set).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

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


def default_maps_limit() -> int:
    """Maps above which compiled kernels are dropped: half of ``vm.max_map_count``, leaving the other half
    to the next data set's compilations and to everything else in the process."""
    return max_map_count() // 2


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
