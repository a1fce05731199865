"""Bounded Levenberg-Marquardt with an active set, written against an ``evaluate`` callback.

Serial code: ``evaluate(theta)`` returns the *global* ``J^T W J``, ``J^T W r``, ``chi2`` and
robust cost (the reduction across ranks hides inside it), so every rank takes the same
decisions. Each iteration evaluates one trial point (one pass, one reduction): an accepted
trial's sums are the next normal equations; a rejected one only raises the damping.

Bounds (``bounded_step``). A parameter on a bound whose descent direction points out of
the box is *pinned* there and the damped system is solved for the others. A moving
parameter that the step carries past a bound is put exactly on it and held, and the
others are solved again (at most once per parameter): the damped Gauss-Newton step on the
face of the box, never a clipped step, which breaks the coupling of correlated
parameters and makes a fit with its optimum on a bound alternate without converging.

Convergence (tested on accepted steps, or before the first step):

- ``gtol``: ``max_i |g_i| / sqrt(H_ii * cost) <= gtol`` over the free, not pinned parameters
  (the cosine between the residual and each Jacobian column);
- ``ftol``: the actual and the predicted relative cost reduction are both ``<= ftol``;
- ``xtol``: ``||D dx|| <= xtol * (||D x|| + xtol)`` with ``D = sqrt(diag H)``.

Hitting ``max_iterations``, or a damping above ``max_damping`` without any decrease of
the cost, ends the fit with ``converged = False`` and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Evaluation = tuple[np.ndarray, np.ndarray, float, float]
"""``(hessian J^T W J, gradient J^T W r, chi2, robust cost)`` at one point."""


@dataclass(frozen=True)
class LMOptions:
    """Stopping rules and damping of the Levenberg-Marquardt loop."""

    max_iterations: int = 100
    xtol: float = 1e-8
    gtol: float = 1e-8
    ftol: float = 1e-10
    initial_damping: float = 1e-3
    initial_growth: float = 2.0
    """Factor of the damping at the next rejected step (it doubles with each rejection in a row)."""
    initial_trusted: bool = True
    """Whether the quadratic model is trusted at the first step (a resumed fit restores its own)."""
    max_damping: float = 1e16
    decrement_tol: float = 0.0
    """Stop when the Gauss-Newton decrement ``g^T H^-1 g`` (cost units) is at most this (0: off)."""


@dataclass
class LMResult:
    """Outcome of a fit: the optimum and the normal equations there."""

    theta: np.ndarray
    converged: bool
    reason: str
    iterations: int
    chi2: float
    cost: float
    hessian: np.ndarray
    gradient: np.ndarray
    history: list[dict] = field(default_factory=list)
    projected_gradient: float = np.nan
    """``max`` gradient cosine over the free, non-pinned parameters at ``theta``."""


PROBE = 0.1
"""Fraction of the step at which the acceleration's finite difference probes the residuals."""

ACCELERATION_LIMIT = 0.75
"""Largest ``2 |a| / |v|`` (scaled) for which the acceleration is added (Transtrum and Sethna's alpha)."""

GOOD_RATIO = 0.5
"""After an accepted step whose actual/predicted cost reduction was at least this, the
quadratic model is trusted and the next step goes without the acceleration's pass."""


def _diagonal_scale(hessian: np.ndarray) -> np.ndarray:
    """``sqrt(diag H)``, floored so that a dead column does not divide by zero."""
    diagonal = np.diag(hessian).copy()
    floor = 1e-30 * max(float(diagonal.max(initial=0.0)), 1e-300)
    return np.sqrt(np.maximum(diagonal, floor))


def pinned(theta, gradient, lower, upper) -> np.ndarray:
    """Parameters at a bound whose descent direction (``-gradient``) points out of the box."""
    return ((theta <= lower) & (gradient > 0)) | ((theta >= upper) & (gradient < 0))


def projected_cosine(theta, hessian, gradient, cost, lower, upper) -> float:
    """``max |g_i| / sqrt(H_ii cost)`` over the parameters that are not pinned (0 if none)."""
    scale = _diagonal_scale(hessian)
    movable = ~pinned(theta, gradient, lower, upper)
    cosine = np.abs(gradient[movable]) / (scale[movable] * np.sqrt(max(cost, 1e-300)))
    return float(cosine.max(initial=0.0))


def newton_decrement(theta, hessian, gradient, lower, upper) -> float:
    """``g^T H^-1 g`` over the parameters not pinned at a bound: the cost the full Gauss-Newton
    step would still remove (the squared distance to the quadratic optimum in the metric ``H``)."""
    movable = ~pinned(theta, gradient, lower, upper)
    if not movable.any():
        return 0.0
    g = gradient[movable]
    return float(abs(g @ _solve(hessian[np.ix_(movable, movable)], g)))


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(matrix, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def bounded_step(hessian, gradient, theta, lower, upper, damping: float, scale) -> tuple[np.ndarray, np.ndarray]:
    """Damped (``damping * scale^2``) Gauss-Newton step in ``[lower, upper]`` over the free parameters
    (active set; module docstring) and the mask of the held ones (pinned, or stopped on a bound)."""
    held = pinned(theta, gradient, lower, upper)
    step = np.zeros_like(theta)
    for _ in range(len(theta) + 1):
        move = ~held
        if not move.any():
            break
        rhs = -(gradient[move] + hessian[np.ix_(move, held)] @ step[held])
        damped = hessian[np.ix_(move, move)] + damping * np.diag(scale[move] ** 2)
        step[move] = _solve(damped, rhs)
        trial = theta + step
        below, above = move & (trial < lower), move & (trial > upper)
        if not (below.any() or above.any()):
            break
        step[below] = lower[below] - theta[below]
        step[above] = upper[above] - theta[above]
        held = held | below | above
    return step, held


def acceleration(hessian, gradient, mixed_gradient, velocity, held, damping: float, scale, probe: float) -> np.ndarray:
    """Geodesic acceleration ``a`` of the step ``velocity`` (held parameters get 0): the damped system
    solved for ``J^T r_vv ~ (2 / probe) ((mixed_gradient - gradient) / probe - H velocity)``,
    ``mixed_gradient = J(theta)^T W r(theta + probe * velocity)``."""
    move = ~held
    second = (2.0 / probe) * ((mixed_gradient - gradient) / probe - hessian @ velocity)
    result = np.zeros_like(velocity)
    if move.any():
        damped = hessian[np.ix_(move, move)] + damping * np.diag(scale[move] ** 2)
        result[move] = _solve(damped, -second[move])
    return result


def levenberg_marquardt(
    evaluate: Callable[[np.ndarray], Evaluation],
    theta0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    free: np.ndarray,
    options: LMOptions = LMOptions(),
    initial: Evaluation | None = None,
    quiet: bool = False,
    on_accept: Callable[[np.ndarray, int, float, float, bool], None] | None = None,
    first_iteration: int = 1,
    mixed_gradient: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> LMResult:
    """Minimise the robust cost from ``theta0`` within ``[lower, upper]`` over the ``free`` mask.

    ``initial``: the evaluation at ``theta0``; ``quiet``: iterations at DEBUG; ``on_accept(theta,
    iteration, damping, growth, trusted)`` sees the state after every step (enough to resume on the same
    path). ``mixed_gradient(theta, theta')`` (``J(theta)^T W r(theta')``) turns on geodesic
    acceleration after a rejected or poorly predicted step (ratio below ``GOOD_RATIO``).
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lower, upper)
    free = np.asarray(free, dtype=bool)
    lo, hi = lower[free], upper[free]
    hessian, gradient, chi2, cost = initial if initial is not None else evaluate(theta)
    damping, growth = options.initial_damping, options.initial_growth
    level = logging.DEBUG if quiet else logging.INFO
    trusted = options.initial_trusted  # the quadratic model predicted the last step well (or there was none)
    history: list[dict] = []
    reason, converged = f"reached max_iterations={options.max_iterations}", False
    iteration = first_iteration - 1
    for iteration in range(first_iteration, options.max_iterations + 1):
        start = time.perf_counter()
        h_free, g_free = hessian[np.ix_(free, free)], gradient[free]
        cosine = projected_cosine(theta[free], h_free, g_free, cost, lo, hi)
        if cosine <= options.gtol:
            converged, reason = True, f"gtol: projected gradient cosine {cosine:.2e} <= {options.gtol:g}"
            iteration -= 1
            break
        if options.decrement_tol > 0:
            decrement = newton_decrement(theta[free], h_free, g_free, lo, hi)
            if decrement <= options.decrement_tol:
                converged, reason = True, f"decrement: g^T H^-1 g {decrement:.2e} <= {options.decrement_tol:.2e}"
                iteration -= 1
                break
        scale = _diagonal_scale(h_free)
        step, held = bounded_step(h_free, g_free, theta[free], lo, hi, damping, scale)
        if mixed_gradient is not None and not trusted and np.any(step):
            probe = theta.copy()
            probe[free] = np.clip(theta[free] + PROBE * step, lo, hi)
            mixed = mixed_gradient(theta, probe)[free]
            curve = acceleration(h_free, g_free, mixed, step, held, damping, scale, PROBE)
            if 2.0 * np.linalg.norm(scale * curve) <= ACCELERATION_LIMIT * np.linalg.norm(scale * step):
                step = step + 0.5 * curve
        trial = theta.copy()
        trial[free] = np.clip(theta[free] + step, lo, hi)
        step = (trial - theta)[free]
        predicted = -(2.0 * g_free @ step + step @ h_free @ step)
        t_hessian, t_gradient, t_chi2, t_cost = evaluate(trial)
        actual = cost - t_cost
        accepted = bool(np.isfinite(t_cost) and actual > 0)
        step_norm = float(np.linalg.norm(scale * step))
        seconds = time.perf_counter() - start
        history.append(
            {
                "iteration": iteration,
                "chi2": float(t_chi2),
                "cost": float(t_cost),
                "step_norm": step_norm,
                "damping": float(damping),
                "accepted": accepted,
                "seconds": seconds,
            }
        )
        verdict = "accepted" if accepted else "rejected"
        message = "LM %3d  chi2 %.6e  step %.3e  damping %.1e  %s  %.2fs"
        log.log(level, message, iteration, t_chi2 if accepted else chi2, step_norm, damping, verdict, seconds)
        if not accepted:
            trusted = False
            damping *= growth
            growth *= 2.0
            if on_accept is not None:
                on_accept(theta, iteration, damping, growth, trusted)
            if damping > options.max_damping:
                reason = f"stalled: damping above {options.max_damping:g} without reducing the cost"
                break
            continue
        ratio = actual / predicted if predicted > 0 else 0.0
        trusted = ratio >= GOOD_RATIO
        damping *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
        growth = 2.0
        if on_accept is not None:
            on_accept(trial, iteration, damping, growth, trusted)
        theta_norm = float(np.linalg.norm(scale * theta[free]))
        relative_actual = actual / cost if cost > 0 else 0.0
        relative_predicted = predicted / cost if cost > 0 else 0.0
        theta, hessian, gradient, chi2, cost = trial, t_hessian, t_gradient, t_chi2, t_cost
        if relative_actual <= options.ftol and relative_predicted <= options.ftol:
            converged, reason = True, f"ftol: relative cost reduction {relative_actual:.2e} <= {options.ftol:g}"
            break
        if step_norm <= options.xtol * (theta_norm + options.xtol):
            converged, reason = True, f"xtol: relative step {step_norm / max(theta_norm, 1e-300):.2e} <= {options.xtol:g}"
            break
    final_cosine = projected_cosine(theta[free], hessian[np.ix_(free, free)], gradient[free], cost, lo, hi)
    return LMResult(theta, converged, reason, iteration, float(chi2), float(cost), hessian, gradient, history, final_cosine)
