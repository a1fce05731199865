"""The per-angle contrast and offset of a shard, sampled relative to their best fit (JAX).

A point of pair ``p`` has ``c2 = offset_p + contrast_p * g``, ``g = g1^2`` from the
physical parameters only, so given those and the noise ``u`` the (tempered) likelihood is
exactly Gaussian in ``beta_p = (offset_p, contrast_p)``:

    A_p = sum_i w_i^2 [[1, g_i], [g_i, g_i^2]],   b_p = sum_i w_i^2 [v_i, g_i v_i]
    beta_p | physical, u  ~  Normal(A_p^-1 b_p, c u^2 A_p^-1)

(``w_i`` weights, ``v_i`` values, ``c`` the calibration). ``ShardModel`` samples standard
normals ``eps_p``: ``beta_p = A_p^-1 b_p + u sqrt(c) C_p eps_p``, ``C_p C_p^T = A_p^-1``.
This removes the curved contrast/offset/``D0`` valley, along which NUTS diverged when the
pairs were whitened by a fixed matrix.

The shard's chi-square then needs no second pass over the points: with ``beta_p = beta_hat_p +
L_p eps_p`` and ``L_p^T A_p L_p = c u^2 I``,

    chi2 = sum_p (q_p - beta_hat_p . b_p) + c u^2 |eps|^2,   q_p = sum_i w_i^2 v_i^2,

the first term the pairs' least-squares residual (``profiled_chi2``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .bounded_maps import soft_clamp, soft_clamp_log_slope


class PairFit(NamedTuple):
    """Every pair's conditional least-squares fit given ``g``, each entry ``(n_pairs,)``."""

    mean_offset: jnp.ndarray
    mean_contrast: jnp.ndarray
    l11: jnp.ndarray
    l21: jnp.ndarray
    l22: jnp.ndarray
    """Lower Cholesky factor of ``noise^2 * calibration * A^-1`` (c2 units)."""
    profiled_chi2: jnp.ndarray
    """``q - beta_hat . b``: the weighted chi-square of the pair's points at its least-squares fit."""


def pair_sums(g, value, weight, pair, n_pairs: int):
    """``(S0, S1, S2, b0, b1, q)`` per pair, each ``(n_pairs,)``: the weighted sums of
    ``1, g, g^2, v, g v, v^2`` (weights squared) over each pair's points."""
    w2 = weight * weight
    columns = jnp.stack([w2, w2 * g, w2 * g * g, w2 * value, w2 * g * value, w2 * value * value], axis=1)
    one_hot = (pair[:, None] == jnp.arange(n_pairs)[None, :]).astype(columns.dtype)
    sums = one_hot.T @ columns
    return tuple(sums[:, k] for k in range(6))


def conditional_pairs(g, value, weight, pair, n_pairs: int, noise, calibration) -> PairFit:
    """Every pair's least-squares ``A^-1 b``, the lower Cholesky factor ``L`` of ``noise^2 *
    calibration * A^-1`` and the chi-square left at that fit (``PairFit``)."""
    s0, s1, s2, b0, b1, q = pair_sums(g, value, weight, pair, n_pairs)
    det = s0 * s2 - s1 * s1
    mean_offset = (s2 * b0 - s1 * b1) / det
    mean_contrast = (s0 * b1 - s1 * b0) / det
    # A^-1 = [[s2, -s1], [-s1, s0]] / det; its Cholesky factor, scaled by noise sqrt(c)
    width = noise * jnp.sqrt(calibration)
    l11 = width * jnp.sqrt(s2 / det)
    l21 = -width * s1 / jnp.sqrt(s2 * det)
    l22 = width / jnp.sqrt(s2)
    return PairFit(mean_offset, mean_contrast, l11, l21, l22, q - mean_offset * b0 - mean_contrast * b1)


def pairs_from_eps(g, value, weight, pair, n_pairs: int, noise, calibration, xi_offset, xi_contrast, low, high):
    """``(offset, contrast, log_jacobian, chi2)`` of every pair from standard normals ``xi``: ``beta =
    mean + L eps``, ``eps = soft_clamp(xi)`` into the range that keeps the pair in its bounds ``low =
    (offset_low, contrast_low)``, ``high`` likewise (the offset fixes ``eps_offset``'s range, then
    ``eps_contrast``'s); ``log_jacobian`` is ``sum log det L`` plus both maps' log-slopes; ``chi2``
    the weighted chi-square ``sum w^2 (v - offset - contrast g)^2`` of all points (module docstring)."""
    mean_offset, mean_contrast, l11, l21, l22, profiled = conditional_pairs(g, value, weight, pair, n_pairs, noise, calibration)
    low_o, high_o = (low[0] - mean_offset) / l11, (high[0] - mean_offset) / l11
    eps_offset = soft_clamp(xi_offset, low_o, high_o)
    centre = mean_contrast + l21 * eps_offset
    low_c, high_c = (low[1] - centre) / l22, (high[1] - centre) / l22
    eps_contrast = soft_clamp(xi_contrast, low_c, high_c)
    log_slope_o = soft_clamp_log_slope(xi_offset, low_o, high_o)
    log_slope_c = soft_clamp_log_slope(xi_contrast, low_c, high_c)
    offset = mean_offset + l11 * eps_offset
    contrast = centre + l22 * eps_contrast
    chi2 = jnp.sum(profiled) + noise * noise * calibration * jnp.sum(eps_offset * eps_offset + eps_contrast * eps_contrast)
    return offset, contrast, jnp.sum(jnp.log(l11) + jnp.log(l22) + log_slope_o + log_slope_c), chi2
