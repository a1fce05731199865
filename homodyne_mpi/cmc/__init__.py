"""Consensus Monte Carlo: sharding, per-shard NUTS on every rank, consensus on rank 0.

Importing this package imports JAX: set the host device count first
(``parallel.devices.configure_host_devices(num_chains)``).
"""

from .combination import METHODS as COMBINATION_METHODS
from .combination import combine, consensus_draws, gaussian_product, modified_zscores, robust_outliers
from .driver import run_cmc
from .plan import RunPlan
from .priors import PriorSpec, build_priors
from .result import CMCResult
from .sampler import SamplerSettings, ShardResult, ShardSampler
from .sharding import adapted_counts, assign_shards, dispatch_order, shard_count

__all__ = [
    "COMBINATION_METHODS",
    "CMCResult",
    "PriorSpec",
    "RunPlan",
    "SamplerSettings",
    "ShardResult",
    "ShardSampler",
    "adapted_counts",
    "assign_shards",
    "build_priors",
    "combine",
    "consensus_draws",
    "dispatch_order",
    "gaussian_product",
    "modified_zscores",
    "robust_outliers",
    "run_cmc",
    "shard_count",
]
