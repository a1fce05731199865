"""Robust losses applied by iteratively reweighted least squares.

With ``z = (r/f)**2`` for a weighted residual ``r`` and scale ``f``, the fit minimises
``f**2 * sum(rho(z))``; each Gauss-Newton step weights the normal equations by ``rho'(z)``.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..config.fitting import NLSQ_LOSSES as LOSSES


def loss_rho(z: jnp.ndarray, loss: str) -> jnp.ndarray:
    """``rho(z)`` of the named loss, for ``z >= 0``."""
    if loss == "linear":
        return z
    if loss == "soft_l1":
        return 2.0 * (jnp.sqrt(1.0 + z) - 1.0)
    if loss == "huber":
        return jnp.where(z <= 1.0, z, 2.0 * jnp.sqrt(jnp.maximum(z, 1.0)) - 1.0)
    if loss == "cauchy":
        return jnp.log1p(z)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def loss_weight(z: jnp.ndarray, loss: str) -> jnp.ndarray:
    """``rho'(z)``: the weight of a point in the reweighted normal equations."""
    if loss == "linear":
        return jnp.ones_like(z)
    if loss == "soft_l1":
        return 1.0 / jnp.sqrt(1.0 + z)
    if loss == "huber":
        return jnp.where(z <= 1.0, 1.0, 1.0 / jnp.sqrt(jnp.maximum(z, 1.0)))
    if loss == "cauchy":
        return 1.0 / (1.0 + z)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
