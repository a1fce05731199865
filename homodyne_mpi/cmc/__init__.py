"""Consensus Monte Carlo: sharding, per-shard NUTS on every rank, consensus on rank 0.

Importing it imports JAX: first call ``parallel.devices.configure_host_devices(num_chains)``.
"""

from .driver import run_cmc

__all__ = ["run_cmc"]
