"""The per-angle contrast and offset of a shard, sampled relative to their best fit (JAX).

A point of pair ``p`` has ``c2 = offset_p + contrast_p * g``, ``g = g1^2`` from the
physical parameters only, so given those and the noise ``u`` the (tempered) likelihood is
exactly Gaussian in ``beta_p = (offset_p, contrast_p)``:

    A_p = sum_i w_i^2 [[1, g_i], [g_i, g_i^2]],   b_p = sum_i w_i^2 [v_i, g_i v_i]
    beta_p | physical, u  ~  Normal(A_p^-1 b_p, c u^2 A_p^-1)

(``w_i`` weights, ``v_i`` values, ``c`` the calibration). ``ShardModel`` samples standard
normals ``eps_p``: ``beta_p = mean_p + C_p eps_p`` with ``C_p`` the Cholesky factor of that
conditional covariance. This removes the curved contrast/offset/``D0`` valley, along which
NUTS diverged when the pairs were whitened by a fixed matrix.

``A_p`` is singular where ``g`` takes one value at all of a pair's points: where the
physical parameters give no decay over the frames (``D(t)`` at its floor, or a rate so
small that ``g1^2 ~ 1``), or a decay complete before the first lag. There only ``offset +
contrast g`` is determined, and the least-squares mean and factor run off to infinity (a
chain that reached such a point froze there). So the map uses the conditional of a broad
Gaussian *reference* on each pair (the middle of its bounds, half their width as std),
``(A_p / (c u^2) + R)^-1``: regular everywhere, and the least-squares one wherever the data
fix the pair. The reference only shapes the coordinates; the density is exact: the chi-square
comes from the pair sums at the mapped values (``pair_chi2``, no second pass over the points)
and the priors are the configured ones.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .bounded_maps import soft_clamp, soft_clamp_log_slope


class PairFit(NamedTuple):
    """Every pair's conditional distribution given ``g``, each entry ``(n_pairs,)``, and its sums."""

    mean_offset: jnp.ndarray
    mean_contrast: jnp.ndarray
    l11: jnp.ndarray
    l21: jnp.ndarray
    l22: jnp.ndarray
    """Lower Cholesky factor of the conditional covariance (c2 units): ``noise^2 * calibration * A^-1``
    without a reference, ``(A / (noise^2 calibration) + reference precision)^-1`` with one."""
    sums: tuple
    """``(S0, S1, S2, b0, b1, q)`` of ``pair_sums``, for the chi-square at any pair values."""


def pair_sums(g, value, weight, pair, n_pairs: int):
    """``(S0, S1, S2, b0, b1, q)`` per pair, each ``(n_pairs,)``: the weighted sums of
    ``1, g, g^2, v, g v, v^2`` (weights squared) over each pair's points."""
    w2 = weight * weight
    columns = jnp.stack([w2, w2 * g, w2 * g * g, w2 * value, w2 * g * value, w2 * value * value], axis=1)
    one_hot = (pair[:, None] == jnp.arange(n_pairs)[None, :]).astype(columns.dtype)
    sums = one_hot.T @ columns
    return tuple(sums[:, k] for k in range(6))


def pair_chi2(sums, offset, contrast):
    """Each pair's weighted chi-square ``sum w^2 (v - offset - contrast g)^2`` from its sums (``pair_sums``)."""
    s0, s1, s2, b0, b1, q = sums
    return (
        q - 2.0 * (offset * b0 + contrast * b1) + offset * offset * s0 + 2.0 * offset * contrast * s1 + contrast * contrast * s2
    )


def conditional_pairs(g, value, weight, pair, n_pairs: int, noise, calibration, reference=None) -> PairFit:
    """Every pair's conditional mean and covariance factor given ``g`` (``PairFit``).

    Without ``reference``: the least-squares fit ``A^-1 b`` and ``noise^2 calibration A^-1``,
    singular where ``g`` is the same at all of a pair's points (no decay, or all decayed). With
    ``reference = (mean, precision)``, each ``(2, n_pairs)`` for (offset, contrast): the
    conditional of a Gaussian prior with that mean and precision, which stays regular there and
    equals the least-squares one wherever the data fix the pair (precision much below ``A``'s)."""
    sums = pair_sums(g, value, weight, pair, n_pairs)
    s0, s1, s2, b0, b1, _ = sums
    variance = noise * noise * calibration  # of a point of weight 1, c2^2 units
    p00, p01, p11 = s0 / variance, s1 / variance, s2 / variance
    r0, r1 = b0 / variance, b1 / variance
    if reference is not None:
        (mean_o, mean_c), (prec_o, prec_c) = reference
        p00, p11 = p00 + prec_o, p11 + prec_c
        r0, r1 = r0 + prec_o * mean_o, r1 + prec_c * mean_c
    det = p00 * p11 - p01 * p01
    mean_offset = (p11 * r0 - p01 * r1) / det
    mean_contrast = (p00 * r1 - p01 * r0) / det
    # covariance P^-1 = [[p11, -p01], [-p01, p00]] / det; its lower Cholesky factor
    l11 = jnp.sqrt(p11 / det)
    l21 = -p01 / jnp.sqrt(p11 * det)
    l22 = 1.0 / jnp.sqrt(p11)
    return PairFit(mean_offset, mean_contrast, l11, l21, l22, sums)


def pairs_from_eps(g, value, weight, pair, n_pairs: int, noise, calibration, xi_offset, xi_contrast, low, high, reference=None):
    """``(offset, contrast, log_jacobian, chi2)`` of every pair from standard normals ``xi``: ``beta =
    mean + L eps``, ``eps = soft_clamp(xi)`` into the range that keeps the pair in its bounds ``low =
    (offset_low, contrast_low)``, ``high`` likewise (the offset fixes ``eps_offset``'s range, then
    ``eps_contrast``'s); ``log_jacobian`` is ``sum log det L`` plus both maps' log-slopes; ``chi2``
    the weighted chi-square ``sum w^2 (v - offset - contrast g)^2`` of all points, from the pair sums.
    ``reference``: see ``conditional_pairs``."""
    fit = conditional_pairs(g, value, weight, pair, n_pairs, noise, calibration, reference)
    mean_offset, mean_contrast, l11, l21, l22 = fit[:5]
    low_o, high_o = (low[0] - mean_offset) / l11, (high[0] - mean_offset) / l11
    eps_offset = soft_clamp(xi_offset, low_o, high_o)
    centre = mean_contrast + l21 * eps_offset
    low_c, high_c = (low[1] - centre) / l22, (high[1] - centre) / l22
    eps_contrast = soft_clamp(xi_contrast, low_c, high_c)
    log_slope_o = soft_clamp_log_slope(xi_offset, low_o, high_o)
    log_slope_c = soft_clamp_log_slope(xi_contrast, low_c, high_c)
    offset = mean_offset + l11 * eps_offset
    contrast = centre + l22 * eps_contrast
    chi2 = jnp.sum(pair_chi2(fit.sums, offset, contrast))
    return offset, contrast, jnp.sum(jnp.log(l11) + jnp.log(l22) + log_slope_o + log_slope_c), chi2
