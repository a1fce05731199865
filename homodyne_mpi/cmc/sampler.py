"""NUTS on one shard: one per-chain function, run in parallel or one chain after another.

``ShardSampler`` runs NumPyro's NUTS for ``num_chains`` chains, ``parallel`` (``jax.pmap``,
one host device per chain) or ``sequential`` (jitted), compiled once per process for every
(equally padded) shard. Chain ``c`` uses key ``split(fold_in(PRNGKey(seed), shard_index),
num_chains)[c]``: a shard's draws depend only on (seed, shard index, shard contents).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer import NUTS
from numpyro.infer.initialization import init_to_value

from .shard_model import ShardData, ShardModel

log = logging.getLogger(__name__)

CHAIN_METHODS = ("parallel", "sequential")

MIN_POINTS_FOR_PARALLEL = 250
"""Shards with fewer points run their chains sequentially (parallel was faster at every size measured, docs/performance.md)."""

DENSE_MASS = False
"""Adapt a diagonal mass matrix: ``ShardModel`` whitens with the NLSQ correlation, and a diagonal adapts far faster."""


@dataclass(frozen=True)
class SamplerSettings:
    """What NUTS does on every shard of a run (identical on every rank)."""

    num_warmup: int
    num_samples: int
    num_chains: int
    chain_method: str
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = DENSE_MASS

    def __post_init__(self) -> None:
        if self.chain_method not in CHAIN_METHODS:
            raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {self.chain_method!r}")
        if self.num_samples < 1 or self.num_chains < 1 or self.num_warmup < 0:
            raise ValueError("SamplerSettings needs num_samples >= 1, num_chains >= 1, num_warmup >= 0")


def chain_method_for(requested: str, num_chains: int, shard_points: int, n_devices: int) -> tuple[str, str | None]:
    """The chain method to use and, when it differs from ``requested``, why: ``sequential`` for
    one chain, below ``MIN_POINTS_FOR_PARALLEL`` points or with fewer host devices than chains."""
    if requested not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {requested!r}")
    if requested == "sequential" or num_chains == 1:
        return "sequential", None
    if shard_points < MIN_POINTS_FOR_PARALLEL:
        return "sequential", f"shards of {shard_points} points are below {MIN_POINTS_FOR_PARALLEL}"
    if n_devices < num_chains:
        return "sequential", (f"{n_devices} host device(s) for {num_chains} chains (set the device count before JAX is imported)")
    return "parallel", None


def chain_keys(seed: int, shard_index: int, num_chains: int) -> jax.Array:
    """One key per chain of a shard: ``split(fold_in(PRNGKey(seed), shard_index), num_chains)``."""
    return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(seed)), int(shard_index)), num_chains)


@dataclass
class ShardDraws:
    """What NUTS returns for one shard."""

    draws: np.ndarray
    """``(num_chains, num_samples, d)``: sampled parameters then ``sigma``."""
    diverging: np.ndarray
    num_steps: np.ndarray
    """``(num_chains, num_samples)``: divergence flags and leapfrog steps per draw."""
    chain_method: str


def diagnostics(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split R-hat and effective sample size per parameter of ``(chains, samples, d)`` draws;
    constant draws get R-hat 1 and ESS the number of draws rather than NaN."""
    draws = np.asarray(draws, dtype=np.float64)
    rhat = np.asarray(split_gelman_rubin(draws), dtype=np.float64).reshape(-1)
    ess = np.asarray(effective_sample_size(draws), dtype=np.float64).reshape(-1)
    constant = np.ptp(draws.reshape(-1, draws.shape[-1]), axis=0) == 0
    rhat[constant] = 1.0
    ess[constant] = draws.shape[0] * draws.shape[1]
    return rhat, ess


class ShardSampler:
    """Runs NUTS on shards of one padded length with fixed settings; compiled once."""

    def __init__(self, model: ShardModel, settings: SamplerSettings, *, seed: int) -> None:
        self.model, self.settings, self.seed = model, settings, int(seed)
        method = settings.chain_method
        if method == "parallel" and jax.local_device_count() < settings.num_chains:
            log.warning(
                "CMC: running chains sequentially: %d host device(s) for %d chains (set the device count before JAX is imported)",
                jax.local_device_count(),
                settings.num_chains,
            )
            method = "sequential"
        self.chain_method = method
        # compiled on the first shard, then reused
        self._compiled = jax.pmap(self._chain, in_axes=(0, 0) + 5 * (None,)) if method == "parallel" else jax.jit(self._chain)
        self._starts = jnp.asarray(model.chain_starts(settings.num_chains))

    def _chain(self, rng_key, start, angle, frame_i, frame_j, value, weight):
        """One chain: NUTS init, warm-up, sampling; returns (draws, diverging, num_steps)."""
        settings, model = self.settings, self.model
        init_key, run_key = jax.random.split(rng_key)
        kernel = NUTS(
            model,
            target_accept_prob=settings.target_accept_prob,
            max_tree_depth=settings.max_tree_depth,
            dense_mass=settings.dense_mass,
            init_strategy=init_to_value(values=model.init_values(init_key, start)),
        )
        args = (angle, frame_i, frame_j, value, weight)
        data = ShardData(*args)
        state = kernel.init(run_key, settings.num_warmup, model_args=args, model_kwargs={})
        constrain = kernel.postprocess_fn(args, {})

        def step(carry, _):
            carry = kernel.sample(carry, args, {})
            return carry, (model.sampled_vector(constrain(carry.z), data), carry.diverging, carry.num_steps)

        # One scan over warm-up and sampling (the kernel adapts while its step counter is
        # below num_warmup): the NUTS step is traced and compiled once, not twice.
        _, collected = jax.lax.scan(step, state, None, length=settings.num_warmup + settings.num_samples)
        return tuple(x[settings.num_warmup :] for x in collected)

    def run(self, shard_index: int, data: ShardData) -> ShardDraws:
        """Sample one shard (arrays already padded to the run's length)."""
        keys = chain_keys(self.seed, shard_index, self.settings.num_chains)
        arrays = tuple(np.asarray(a) for a in data)
        if self.chain_method == "parallel":
            draws, diverging, steps = self._compiled(keys, self._starts, *arrays)
        else:
            per_chain = [self._compiled(keys[c], self._starts[c], *arrays) for c in range(self.settings.num_chains)]
            draws, diverging, steps = (jnp.stack(parts) for parts in zip(*per_chain))
        return ShardDraws(
            draws=np.asarray(draws, dtype=np.float64),
            diverging=np.asarray(diverging, dtype=bool),
            num_steps=np.asarray(steps, dtype=np.int64),
            chain_method=self.chain_method,
        )


ARRAY_FIELDS = ("draws", "diverging", "num_steps", "rhat", "ess")
"""Array fields of ``ShardResult``; they travel as NumPy buffers and into checkpoints."""


@dataclass
class ShardResult:
    """Everything known about one shard after it ran (or failed)."""

    index: int
    n_points: int
    rank: int = 0
    host: str = ""
    seconds: float = 0.0
    """Wall time of the shard on its rank (NUTS, compilation included on a rank's first)."""
    chain_method: str = ""
    num_warmup: int = 0
    num_samples: int = 0
    draws: np.ndarray | None = None
    """``(chains, num_samples, d)``: sampled parameters then ``sigma``."""
    diverging: np.ndarray | None = None
    num_steps: np.ndarray | None = None
    rhat: np.ndarray | None = None
    ess: np.ndarray | None = None
    error: str | None = None
    traceback: str | None = None
    reused: bool = False
    """True when read back from a checkpoint instead of run."""
    target_accept_prob: float = 0.0
    """NUTS target acceptance probability of the draws kept (0: unknown)."""
    retried_because: str | None = None
    """Why the first attempt (at the configured ``target_accept_prob``) was sampled again."""
    extended_to: int = 0
    """Draws per chain of the kept attempt when it was extended because of its R-hat (0: not extended);
    ``rhat``, ``ess``, ``diverging`` and ``num_steps`` cover all of them, ``draws`` every
    ``extended_to / num_samples``-th."""

    @property
    def failed(self) -> bool:
        """True when the shard raised instead of returning draws."""
        return self.error is not None or self.draws is None

    @property
    def rhat_max(self) -> float | None:
        return None if self.rhat is None else float(np.max(self.rhat))

    @property
    def ess_min(self) -> float | None:
        return None if self.ess is None else float(np.min(self.ess))

    @property
    def divergences(self) -> int | None:
        return None if self.diverging is None else int(np.sum(self.diverging))

    @property
    def divergence_rate(self) -> float | None:
        return None if self.diverging is None else float(np.mean(self.diverging))

    def flat_draws(self) -> np.ndarray:
        """Draws with the chains concatenated, ``(chains * samples, d)``."""
        assert self.draws is not None, "flat_draws of a failed shard"
        return self.draws.reshape(-1, self.draws.shape[-1])

    def meta(self) -> dict:
        """The scalar fields (JSON-ready)."""
        return {key: getattr(self, key) if cast is None else cast(getattr(self, key)) for key, cast in META_FIELDS.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are set (booleans as uint8, for MPI buffers and npz)."""
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in ARRAY_FIELDS if getattr(self, name) is not None}
        return {name: value.astype(np.uint8) if value.dtype == bool else value for name, value in arrays.items()}

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict[str, np.ndarray]) -> ShardResult:
        """Inverse of ``meta()`` + ``arrays()``."""
        fields = {key: meta[key] for key in META_FIELDS if key in meta}
        for name in set(ARRAY_FIELDS) & set(arrays):
            fields[name] = np.asarray(arrays[name], dtype=bool if name == "diverging" else None)
        return cls(**fields)


META_FIELDS: dict[str, Callable[[Any], Any] | None] = {
    field.name: {"int": int, "float": float}.get(str(field.type))
    for field in dataclasses.fields(ShardResult)
    if field.name not in (*ARRAY_FIELDS, "reused")
}
"""Scalar fields of ``ShardResult`` (``meta()``) in field order, and the JSON conversion of each
from its annotation (``int``, ``float``; None: as is)."""
