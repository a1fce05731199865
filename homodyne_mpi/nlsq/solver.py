"""Levenberg-Marquardt with box bounds, written against an ``evaluate`` callback.

The solver is serial code: ``evaluate(theta)`` returns the *global* ``J^T W J``,
``J^T W r``, ``chi2`` and robust cost (the MPI sum hides inside it), and every rank takes
the same decisions because it sees the same numbers.

Each iteration evaluates one trial point, so it costs one pass over the data and one
Allreduce: the accumulators at an accepted trial are the next iteration's normal
equations, and a rejected trial only raises the damping.

Convergence (tested on accepted steps only, so a huge damping can never pass for it):

- ``gtol``: ``max_i |g_i| / sqrt(H_ii * cost) <= gtol`` over free parameters that are not
  pinned at a bound (the cosine between the residual and each Jacobian column);
- ``ftol``: the relative cost reduction of the step and the one predicted are both
  ``<= ftol``;
- ``xtol``: ``||D dx|| <= xtol * (||D x|| + xtol)`` with ``D = sqrt(diag H)``.

Hitting ``max_iterations``, or a damping above ``max_damping`` without any decrease of
the cost, ends the fit with ``converged = False`` and the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

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
    max_damping: float = 1e16


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


def _diagonal_scale(hessian: np.ndarray) -> np.ndarray:
    """``sqrt(diag H)``, floored so that a dead column does not divide by zero."""
    diagonal = np.diag(hessian).copy()
    floor = 1e-30 * max(float(diagonal.max(initial=0.0)), 1e-300)
    return np.sqrt(np.maximum(diagonal, floor))


def _pinned(theta, gradient, lower, upper) -> np.ndarray:
    """Parameters at a bound whose descent direction points out of the box."""
    at_lower = (theta <= lower) & (gradient > 0)
    at_upper = (theta >= upper) & (gradient < 0)
    return at_lower | at_upper


def levenberg_marquardt(
    evaluate: Callable[[np.ndarray], Evaluation],
    theta0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    free: np.ndarray,
    options: LMOptions = LMOptions(),
    initial: Evaluation | None = None,
    quiet: bool = False,
    on_accept: Callable[[np.ndarray, int, float], None] | None = None,
    first_iteration: int = 1,
) -> LMResult:
    """Minimise the robust cost from ``theta0`` within ``[lower, upper]``.

    ``free`` (bool mask) selects the fitted parameters; the others stay at ``theta0``.
    ``initial`` may carry the evaluation at ``theta0`` if the caller already has it;
    ``quiet`` logs the iterations at DEBUG instead of INFO; ``on_accept(theta,
    iteration, damping)`` is called after every accepted step with the state a resumed
    fit needs (``theta0=theta``, ``initial_damping=damping``,
    ``first_iteration=iteration + 1`` continue the same path).
    """
    theta = np.clip(np.asarray(theta0, dtype=float), lower, upper)
    free = np.asarray(free, dtype=bool)
    hessian, gradient, chi2, cost = initial if initial is not None else evaluate(theta)
    damping, growth = options.initial_damping, 2.0
    history: list[dict] = []
    reason, converged = f"reached max_iterations={options.max_iterations}", False
    iteration = 0
    for iteration in range(first_iteration, options.max_iterations + 1):
        start = time.perf_counter()
        h_free = hessian[np.ix_(free, free)]
        g_free = gradient[free]
        scale = _diagonal_scale(h_free)
        movable = ~_pinned(theta[free], g_free, lower[free], upper[free])
        cosine = np.abs(g_free[movable]) / (scale[movable] * np.sqrt(max(cost, 1e-300)))
        if cosine.size == 0 or cosine.max() <= options.gtol:
            converged, reason = True, f"gtol: max gradient cosine {cosine.max(initial=0):.2e} <= {options.gtol:g}"
            iteration -= 1
            break
        damped = h_free + damping * np.diag(scale**2)
        try:
            step_free = np.linalg.solve(damped, -g_free)
        except np.linalg.LinAlgError:
            step_free = -np.linalg.lstsq(damped, g_free, rcond=None)[0]
        trial = theta.copy()
        trial[free] = theta[free] + step_free
        trial = np.clip(trial, lower, upper)
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
        if accepted:
            ratio = actual / predicted if predicted > 0 else 0.0
            damping *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
            growth = 2.0
            if on_accept is not None:
                on_accept(trial, iteration, damping)
            step_norm = np.linalg.norm(scale * step)
            theta_norm = np.linalg.norm(scale * theta[free])
            relative_actual = actual / cost if cost > 0 else 0.0
            relative_predicted = predicted / cost if cost > 0 else 0.0
            theta, hessian, gradient, chi2, cost = trial, t_hessian, t_gradient, t_chi2, t_cost
            if relative_actual <= options.ftol and relative_predicted <= options.ftol:
                converged, reason = True, f"ftol: relative cost reduction {relative_actual:.2e} <= {options.ftol:g}"
                break
            if step_norm <= options.xtol * (theta_norm + options.xtol):
                converged, reason = True, f"xtol: relative step {step_norm / max(theta_norm, 1e-300):.2e} <= {options.xtol:g}"
                break
        else:
            damping *= growth
            growth *= 2.0
            if damping > options.max_damping:
                reason = f"stalled: damping above {options.max_damping:g} without reducing the cost"
                break
    return LMResult(theta, converged, reason, iteration, float(chi2), float(cost), hessian, gradient, history)
