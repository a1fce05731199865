"""Host-device setup for JAX: must run before ``jax`` is imported, once, here only.

NumPyro runs chains with ``chain_method='parallel'`` on separate JAX devices; on a CPU
those are the host devices XLA creates from ``--xla_force_host_platform_device_count``.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")

log = logging.getLogger(__name__)


def with_host_device_count(xla_flags: str, count: int) -> str:
    """``XLA_FLAGS`` text with the host device count set to ``count`` (replaced if present; other flags kept)."""
    if count < 1:
        raise ValueError(f"host device count must be >= 1, got {count}")
    flag = f"--xla_force_host_platform_device_count={int(count)}"
    if _COUNT_FLAG.search(xla_flags):
        return _COUNT_FLAG.sub(flag, xla_flags)
    return f"{xla_flags} {flag}".strip()


def configure_host_devices(count: int) -> bool:
    """Ask XLA for ``count`` CPU devices and enable float64 in JAX; False (with a warning) if JAX was imported
    before with fewer devices (the count cannot change any more)."""
    os.environ["XLA_FLAGS"] = with_host_device_count(os.environ.get("XLA_FLAGS", ""), count)
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    if "jax" in sys.modules:
        import jax

        have = jax.local_device_count()
        if have < count:
            message = "JAX was imported before the device setup: %d host device(s) instead of %d; parallel chains will fall back to sequential"
            log.warning(message, have, count)
            return False
    return True


def enable_compilation_cache(directory: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (None: off: a second run with the same shapes
    loads its compiled kernels); returns the resolved directory."""
    if not directory:
        return None
    import jax

    path = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        log.warning("compilation cache disabled: cannot create %s (%s)", path, error)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
