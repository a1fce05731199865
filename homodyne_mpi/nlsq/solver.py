"""Bounded Levenberg-Marquardt with an active set, written against an ``evaluate`` callback.

The solver is serial code: ``evaluate(theta)`` returns the *global* ``J^T W J``,
``J^T W r``, ``chi2`` and robust cost (the reduction across ranks hides inside it), and
every rank takes the same decisions because it sees the same numbers.

Each iteration evaluates one trial point, so it costs one pass over the data and one
reduction: the accumulators at an accepted trial are the next iteration's normal
equations, and a rejected trial only raises the damping.

Bounds (``bounded_step``). A parameter on a bound whose descent direction points out of
the box is *pinned*: it is held there and the damped system is solved for the others.
If the step then carries a moving parameter past a bound, that parameter is moved
exactly to the bound and held, and the others are solved again with its (now fixed)
move on the right-hand side; this repeats until the step stays inside the box (at most
once per parameter). The step is therefore the damped Gauss-Newton step on the face of
the box it ends on, never a clipped unconstrained step: clipping breaks the coupling of
strongly correlated parameters, and a fit whose optimum lies on a bound then alternates
accepted and rejected steps without converging.

Convergence (tested on accepted steps, or before the first step, so a huge damping can
never pass for it):

- ``gtol``: the projected gradient ``max_i |g_i| / sqrt(H_ii * cost) <= gtol`` over free
  parameters that are not pinned (the cosine between the residual and each Jacobian
  column; a pinned parameter's gradient component is zero after projection);
- ``ftol``: the relative cost reduction of the step and the one predicted are both
  ``<= ftol``;
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
    at_lower = (theta <= lower) & (gradient > 0)
    at_upper = (theta >= upper) & (gradient < 0)
    return at_lower | at_upper


def projected_cosine(theta, hessian, gradient, cost, lower, upper) -> float:
    """``max |g_i| / sqrt(H_ii cost)`` over the parameters that are not pinned (0 if none)."""
    scale = _diagonal_scale(hessian)
    movable = ~pinned(theta, gradient, lower, upper)
    cosine = np.abs(gradient[movable]) / (scale[movable] * np.sqrt(max(cost, 1e-300)))
    return float(cosine.max(initial=0.0))


def newton_decrement(theta, hessian, gradient, lower, upper) -> float:
    """``g^T H^-1 g`` over the parameters not pinned at a bound: the cost the full
    Gauss-Newton step would still remove, i.e. the squared distance to the local quadratic
    optimum in the metric ``H`` (in units of the noise variance when divided by it)."""
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
    """Damped Gauss-Newton step that stays in ``[lower, upper]`` (active set; module docstring).

    All arrays are over the free parameters; ``scale`` is ``sqrt(diag H)`` (Marquardt's
    damping ``damping * scale^2``). Returns the step and the mask of the held parameters
    (pinned, or stopped on a bound by this step).
    """
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
    """Geodesic acceleration ``a`` of the step ``velocity`` (free parameters; held ones get 0).

    ``mixed_gradient`` is ``J(theta)^T W r(theta + probe * velocity)``; then
    ``J^T r_vv ~ (2 / probe) ((mixed_gradient - gradient) / probe - H velocity)`` is the
    residuals' second directional derivative seen by the Jacobian, and ``a`` solves the
    same damped system with it on the right-hand side. The step ``velocity + a / 2`` then
    follows a curved valley instead of leaving it along the tangent.
    """
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
    on_accept: Callable[[np.ndarray, int, float, float], None] | None = None,
    first_iteration: int = 1,
    mixed_gradient: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> LMResult:
    """Minimise the robust cost from ``theta0`` within ``[lower, upper]``.

    ``free`` (bool mask) selects the fitted parameters; the others stay at ``theta0``.
    ``initial`` may carry the evaluation at ``theta0`` if the caller already has it;
    ``quiet`` logs the iterations at DEBUG instead of INFO; ``on_accept(theta,
    iteration, damping, growth)`` is called after every step, accepted or rejected, with
    the state a resumed fit needs (``theta0=theta``, ``initial_damping=damping``,
    ``initial_growth=growth``, ``first_iteration=iteration + 1`` continue the same path). ``mixed_gradient(theta, theta')``
    (``J(theta)^T W r(theta')``, optional) turns on geodesic acceleration
    (``acceleration``): one more pass in the iterations that follow a rejected step or
    one whose cost reduction fell short of the quadratic model's (ratio below
    ``GOOD_RATIO``), the steps of a curved valley; the first step and those after a
    well-predicted one are plain. An acceleration of more than ``ACCELERATION_LIMIT`` of
    the step (scaled norms) is not used (the plain step is tried).
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lower, upper)
    free = np.asarray(free, dtype=bool)
    lo, hi = lower[free], upper[free]
    hessian, gradient, chi2, cost = initial if initial is not None else evaluate(theta)
    damping, growth = options.initial_damping, options.initial_growth
    trusted = True  # the quadratic model predicted the last step well (or there was none)
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
        history.append(
            {
                "iteration": iteration,
                "chi2": float(t_chi2),
                "cost": float(t_cost),
                "step_norm": float(np.linalg.norm(scale * step)),
                "damping": float(damping),
                "accepted": accepted,
                "seconds": time.perf_counter() - start,
            }
        )
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "LM %3d  chi2 %.6e  step %.3e  damping %.1e  %s  %.2fs",
            iteration,
            t_chi2 if accepted else chi2,
            history[-1]["step_norm"],
            damping,
            "accepted" if accepted else "rejected",
            history[-1]["seconds"],
        )
        if not accepted:
            trusted = False
            damping *= growth
            growth *= 2.0
            if on_accept is not None:
                on_accept(theta, iteration, damping, growth)
            if damping > options.max_damping:
                reason = f"stalled: damping above {options.max_damping:g} without reducing the cost"
                break
            continue
        ratio = actual / predicted if predicted > 0 else 0.0
        trusted = ratio >= GOOD_RATIO
        damping *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
        growth = 2.0
        if on_accept is not None:
            on_accept(trial, iteration, damping, growth)
        step_norm = float(np.linalg.norm(scale * step))
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
