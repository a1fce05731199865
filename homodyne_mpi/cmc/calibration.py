"""The factor CMC divides its log-likelihood by, from the NLSQ jackknife (``docs/cmc.md``).

Points that share frames carry less information than independent ones. Dividing the log-likelihood
by ``c`` widens the posterior by ``sqrt(c)``, so that its ``CREDIBLE_LEVEL`` interval is the jackknife's:

    r_i = (std_jackknife_i / std_model_i)^2
    c_i = 1 + max(0, r_i - 1) * (t_nu_i / z)^2      if the excess is significant, else 1
    c   = max(1, median of c_i over the free physical parameters)

``z`` and ``t_nu`` are the normal and Student's t quantiles at ``(1 + level) / 2``, ``nu_i``
the jackknife variance's effective degrees of freedom (``nlsq.jackknife.replicate_dof``, at least
``MIN_DOF``): on speckle data it rests on a few influential frames. Only the excess over the model
variance (the frame-shared part) is widened, so ``c`` stays near 1 on independent noise
(``docs/uncertainty.md``).

Significance: with independent noise the replicates' variance ``v_rep`` of a parameter is at most
about its independent-noise part ``v_ind`` times ``chi2_nu / nu`` (measured: median 0.67 ``v_ind``),
so with 2 or 3 degrees of freedom it exceeds ``v_ind`` by half on about a fifth of fits, and the t
widening turned such chance excesses into factors of 1.4 to 7 (``docs/uncertainty.md``). An excess counts only where
``v_rep / v_ind`` lies above the ``1 - EXCESS_SIGNIFICANCE`` quantile of ``chi2_nu / nu``
(``significant_excess``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CREDIBLE_LEVEL = 0.90
"""Central interval whose width the calibration matches (CMC reports q05 and q95)."""

MIN_DOF = 2.0
"""Lower limit of the degrees of freedom used for the t quantile (t_1 would widen 3.8-fold)."""

EXCESS_SIGNIFICANCE = 0.05
"""Chance, with independent noise only, that a parameter's jackknife excess counts (``significant_excess``)."""


def t_widening(dof: np.ndarray, level: float = CREDIBLE_LEVEL) -> np.ndarray:
    """``(t_nu / z)^2``: variance factor that turns a normal interval at ``level`` into Student's t one."""
    quantile = 0.5 + level / 2.0
    dof = np.maximum(np.asarray(dof, dtype=float), MIN_DOF)
    return (stats.t.ppf(quantile, dof) / stats.norm.ppf(quantile)) ** 2


def significant_excess(independent_ratio: np.ndarray, dof: np.ndarray, significance: float = EXCESS_SIGNIFICANCE) -> np.ndarray:
    """Whether each ``v_rep / v_ind`` (replicates' variance over its independent-noise part, both from
    the jackknife) is above the ``1 - significance`` quantile of ``chi2_nu / nu`` at the replicates'
    ``dof`` (at least 1): where independent noise alone would give it less often than ``significance``."""
    dof = np.maximum(np.asarray(dof, dtype=float), 1.0)
    return np.asarray(independent_ratio, dtype=float) > stats.chi2.isf(significance, dof) / dof


def tempering_factor(
    std_jackknife: np.ndarray,
    std_model: np.ndarray,
    dof: np.ndarray | None,
    use: np.ndarray,
    independent_ratio: np.ndarray | None = None,
) -> float:
    """The log-likelihood divisor ``c >= 1`` (module docstring), dimensionless, from per-parameter
    standard errors (same units), the jackknife's effective ``dof`` (None: no t widening) and
    the mask ``use`` of deciding parameters; zero model errors are skipped (1 when none is left).
    ``independent_ratio`` (``v_rep / v_ind`` per parameter; None: every excess counts) with ``dof``
    drops the excesses that independent noise explains (``significant_excess``)."""
    std_jackknife, std_model = np.asarray(std_jackknife, dtype=float), np.asarray(std_model, dtype=float)
    chosen = np.asarray(use, dtype=bool) & (std_model > 0) & np.isfinite(std_jackknife)
    if not np.any(chosen):
        return 1.0
    excess = np.maximum((std_jackknife[chosen] / std_model[chosen]) ** 2 - 1.0, 0.0)
    if dof is not None:
        excess = excess * t_widening(np.asarray(dof, dtype=float)[chosen])
        if independent_ratio is not None:
            counts = significant_excess(np.asarray(independent_ratio, dtype=float)[chosen], np.asarray(dof, dtype=float)[chosen])
            excess = np.where(counts, excess, 0.0)
    return float(max(1.0, np.median(1.0 + excess)))


def independent_ratio(jackknife) -> np.ndarray:
    """``(P,)`` ``v_rep / v_ind`` of a ``JackknifeResult``: each parameter's replicate variance over
    what independent noise would give it (infinite where that is zero but the replicates moved, 0 where neither)."""
    replicates = np.diag(np.asarray(jackknife.covariance_replicates, dtype=float))
    independent = np.diag(np.asarray(jackknife.covariance_independent, dtype=float))
    positive = independent > 0
    ratio = np.where(replicates > 0, np.inf, 0.0)
    ratio[positive] = replicates[positive] / independent[positive]
    return ratio


def likelihood_calibration(nlsq_result, problem) -> float:
    """``tempering_factor`` of the free physical parameters of ``nlsq_result`` (an ``NLSQResult``),
    dimensionless; 1 without a warm start or without a jackknife."""
    if nlsq_result is None or nlsq_result.jackknife is None:
        return 1.0
    physical = np.zeros(len(problem.free), dtype=bool)
    physical[problem.layout.physical_slice] = True
    jackknife = nlsq_result.jackknife
    return tempering_factor(
        jackknife.std, nlsq_result.std, jackknife.effective_dof, physical & problem.free, independent_ratio(jackknife)
    )


def check_warm_start(warm_start) -> None:
    """Refuse (``InputError``: exit 2) an unconverged or non-finite warm start: the priors,
    reparametrisation and whitening are centred on the NLSQ values and scaled by its errors."""
    from ..errors import InputError

    if warm_start is None:
        return
    if not np.all(np.isfinite(np.asarray(warm_start.theta, dtype=float))):
        raise InputError(
            "CMC: the NLSQ warm start has non-finite values -- fix the starting values or bounds, or run CMC without the warm start (--no-nlsq-warmstart)"
        )
    if not warm_start.converged:
        raise InputError(
            f"CMC: the NLSQ warm start did not converge ({warm_start.reason}, {warm_start.iterations} iterations) "
            "-- raise optimization.nlsq.max_iterations or fix the starting values, or run CMC without the warm start (--no-nlsq-warmstart)"
        )


def uncalibrated_warning(calibrate: bool, nlsq_result) -> str | None:
    """Why the CMC likelihood is left untempered although calibration is on, or None (without a
    jackknife, 90% intervals held the truth a quarter of the time on speckle data)."""
    if not calibrate or (nlsq_result is not None and nlsq_result.jackknife is not None):
        return None
    cause = "no NLSQ fit ran" if nlsq_result is None else "the NLSQ fit has no jackknife"
    return (
        f"CMC likelihood NOT calibrated: {cause}, so intervals are likely too narrow on correlated data "
        "-- set optimization.nlsq.uncertainty: jackknife and run NLSQ first (method: both)"
    )
