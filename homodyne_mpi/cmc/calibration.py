"""The factor CMC divides its log-likelihood by, from the NLSQ jackknife.

Points that share frames carry less information than independent ones. Dividing the
Gaussian log-likelihood by ``c`` widens its posterior by ``sqrt(c)``; ``c`` is chosen so
that the posterior's central ``CREDIBLE_LEVEL`` interval is as wide as the jackknife's
own interval at that level:

    r_i = (std_jackknife_i / std_model_i)^2
    c_i = 1 + max(0, r_i - 1) * (t_nu_i / z)^2
    c   = max(1, median of c_i over the free physical parameters)

``z`` is the normal quantile and ``t_nu`` Student's t quantile at ``(1 + level) / 2``,
``nu_i`` the effective degrees of freedom of the jackknife variance
(``nlsq.jackknife.replicate_dof``), at least ``MIN_DOF``. The t factor is the usual one
for a variance estimated from few independent pieces (few clusters in cluster-robust
regression): the jackknife variance of speckle data rests on a handful of influential
frames (a median of 4.8 effective degrees of freedom out of 20 blocks), so its ratio to
the model variance scatters from seed to seed by a factor of several, and the plain ratio
gave intervals that held the truth too rarely (``docs/uncertainty.md``).

Only the excess over the model variance is widened. The reported jackknife variance is
the model variance (known from all points, not from the replicates) plus the
frame-shared excess estimated from the replicates (``nlsq.jackknife``); only the
second is a few-piece estimate. On independent noise the excess is near 0 and ``c``
near 1, where widening the whole ratio gave 1.5 to 3.2 (the t factor at 5 to 2 degrees
of freedom) and CMC intervals 1.2 to 1.8 times too wide; on speckle data, where the
ratio is 10 to 100, the two rules differ by under 3%.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CREDIBLE_LEVEL = 0.90
"""Central interval whose width the calibration matches (CMC reports q05 and q95)."""

MIN_DOF = 2.0
"""Lower limit of the degrees of freedom used for the t quantile (t_1 would widen 3.8-fold)."""


def t_widening(dof: np.ndarray, level: float = CREDIBLE_LEVEL) -> np.ndarray:
    """``(t_nu / z)^2``: variance factor that turns a normal interval at ``level`` into Student's t one."""
    quantile = 0.5 + level / 2.0
    dof = np.maximum(np.asarray(dof, dtype=float), MIN_DOF)
    return (stats.t.ppf(quantile, dof) / stats.norm.ppf(quantile)) ** 2


def tempering_factor(std_jackknife: np.ndarray, std_model: np.ndarray, dof: np.ndarray | None, use: np.ndarray) -> float:
    """The log-likelihood divisor ``c >= 1`` (module docstring), dimensionless.

    ``std_jackknife`` and ``std_model`` are per-parameter standard errors (any units, the
    same for both), ``dof`` the jackknife's effective degrees of freedom per parameter
    (``None``: no t widening), ``use`` a boolean mask of the parameters that decide (the
    free physical ones); parameters with a zero model error are skipped. 1 when none is left.
    """
    std_jackknife = np.asarray(std_jackknife, dtype=float)
    std_model = np.asarray(std_model, dtype=float)
    chosen = np.asarray(use, dtype=bool) & (std_model > 0) & np.isfinite(std_jackknife)
    if not np.any(chosen):
        return 1.0
    excess = np.maximum((std_jackknife[chosen] / std_model[chosen]) ** 2 - 1.0, 0.0)
    if dof is not None:
        excess = excess * t_widening(np.asarray(dof, dtype=float)[chosen])
    return float(max(1.0, np.median(1.0 + excess)))


def likelihood_calibration(nlsq_result, problem) -> float:
    """The factor the CMC log-likelihood is divided by (``tempering_factor``), dimensionless.

    From the free physical parameters' jackknife-to-model variance ratios of
    ``nlsq_result`` (an ``NLSQResult``), each widened by Student's t at the jackknife's
    effective degrees of freedom; 1 without a warm start or without a jackknife.
    """
    if nlsq_result is None or nlsq_result.jackknife is None:
        return 1.0
    physical = np.zeros(len(problem.free), dtype=bool)
    physical[problem.layout.physical_slice] = True
    jackknife = nlsq_result.jackknife
    return tempering_factor(jackknife.std, nlsq_result.std, jackknife.effective_dof, physical & problem.free)


def check_warm_start(warm_start) -> None:
    """Refuse (``InputError``: exit 2, one line) a warm start CMC cannot be built on.

    The priors, the reparametrisation and the whitening of every shard are centred on the
    NLSQ values and scaled by the NLSQ errors; from an unconverged or non-finite fit they
    would put the chains in the wrong place with the wrong widths.
    """
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
    """Why the CMC likelihood is left untempered although calibration is on, or None.

    Without a jackknife there is no measure of how much less the correlated points carry
    than their number says; ``docs/uncertainty.md`` measured 90% intervals that held the
    truth a quarter of the time on speckle data in that case.
    """
    if not calibrate or (nlsq_result is not None and nlsq_result.jackknife is not None):
        return None
    cause = "no NLSQ fit ran" if nlsq_result is None else "the NLSQ fit has no jackknife"
    return (
        f"CMC likelihood NOT calibrated: {cause}, so intervals are likely too narrow on correlated data "
        "-- set optimization.nlsq.uncertainty: jackknife and run NLSQ first (method: both)"
    )
