"""Smooth increasing maps of the real line onto an interval, with their log-slopes.

``soft_clamp`` is the identity, to ``exp(-distance)``, more than a few units from both
bounds, so a coordinate whose posterior is far from its bounds keeps its Gaussian shape;
the shard model uses it for every bounded coordinate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def soft_clamp(y, low, high):
    """``z = low + softplus(y - low) - softplus(y - high)``: the real line onto ``(low, high)`` (JAX)."""
    return low + jax.nn.softplus(y - low) - jax.nn.softplus(y - high)


def soft_clamp_log_slope(y, low, high, xp=jnp):
    """``log dz/dy`` of ``soft_clamp``: ``sigmoid(y - low) - sigmoid(y - high)``, written as
    ``log sigmoid(y - low) + log sigmoid(high - y) + log(1 - exp(low - high))``."""
    if xp is np:
        log_sigmoid = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
    else:
        log_sigmoid = jax.nn.log_sigmoid
    return log_sigmoid(y - low) + log_sigmoid(high - y) + xp.log(-xp.expm1(low - high))


def soft_clamp_inverse(z, low, high) -> np.ndarray:
    """The ``y`` with ``soft_clamp(y) = z`` for ``low < z < high`` (NumPy):
    ``y = z + log(1 - exp(low - z)) - log(1 - exp(z - high))``."""
    z = np.asarray(z, dtype=float)
    return z + np.log(-np.expm1(low - z)) - np.log(-np.expm1(z - high))
