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
- ``xtol``: ``||D dx|| <= xtol * (||D x|| + xtol)`` with ``D = sqrt(diag H)``;
- ``decrement_tol`` (off by default): the Newton decrement ``g^T H^-1 g`` over the parameters
  not pinned is at most it (the quadratic optimum is that close, in cost units).

``finish_step`` (off by default; the jackknife refits). Once the decrement is at most
``finish_decrement_tol`` (looser than ``decrement_tol``) the fit may stop, and the returned
``theta`` is the point plus the bounded Gauss-Newton step of the system already in hand
(``finish_step``: ``bounded_step`` with ``FINISH_DAMPING``), without a pass to check it:
while Newton's steps converge quadratically, the finished point lies far closer to the
optimum than the decrement alone promises. It stops this way only after an accepted step
and only when the finish can be trusted: the finish step is at most ``finish_contraction`` times the last
accepted step (``contraction``, metric ``H``: a fit crawling along a curved valley takes
finish steps as long as its steps), and, with ``finish_drift_tol``, the variances
``diag H^-1`` changed little enough over the last step that they should not move by more
than that over the finish (``variance_drift``; the jackknife takes each refit's model
covariance from the system in hand). Otherwise the fit steps on to ``decrement_tol`` as
without the finish. ``chi2``, ``cost``, ``hessian``, ``gradient`` and ``projected_gradient``
stay those of the last evaluated point.

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
    finish_step: bool = False
    """Allow stopping at ``finish_decrement_tol`` with the point plus its bounded Gauss-Newton step
    (no pass; module docstring). Off: every caller but the jackknife refits, unchanged bit for bit."""
    finish_decrement_tol: float = 0.0
    """With ``finish_step``: the decrement (cost units) at which a fit may stop with the finish step."""
    finish_contraction: float = 0.25
    """Largest ``contraction`` (finish step over the last accepted step, metric ``H``) that finishes."""
    finish_drift_tol: float = 0.0
    """Largest ``variance_drift`` (predicted relative change of ``diag H^-1`` over the finish) that finishes (0: not checked)."""


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
    """``max`` gradient cosine over the free, non-pinned parameters at ``theta`` (before a finish step)."""
    finished: bool = False
    """``theta`` is the last evaluated point plus its Gauss-Newton step (``LMOptions.finish_step``);
    ``chi2``, ``cost``, ``hessian`` and ``gradient`` are those of that point."""


PROBE = 0.1
"""Fraction of the step at which the acceleration's finite difference probes the residuals."""

ACCELERATION_LIMIT = 0.75
"""Largest ``2 |a| / |v|`` (scaled) for which the acceleration is added (Transtrum and Sethna's alpha)."""

FINISH_DAMPING = 1e-12
"""Damping (times ``diag H``) of the finish step: Gauss-Newton, kept off an exactly singular system."""

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


def finish_step(hessian, gradient, theta, lower, upper) -> np.ndarray:
    """The bounded Gauss-Newton step (damping ``FINISH_DAMPING``) of the system at ``theta``, within the box."""
    step, _ = bounded_step(hessian, gradient, theta, lower, upper, FINISH_DAMPING, _diagonal_scale(hessian))
    return np.clip(theta + step, lower, upper) - theta


def contraction(hessian, last_step, finish) -> float:
    """``|finish| / |last_step|`` in the metric ``hessian``: Deuflhard's contraction factor, small while
    Newton's steps converge quadratically, near or above 1 where the fit crawls (inf without a last step)."""
    last = float(last_step @ hessian @ last_step)
    return float(np.sqrt(max(finish @ hessian @ finish, 0.0) / last)) if last > 0 else np.inf


def _variances(hessian: np.ndarray) -> np.ndarray:
    try:
        return np.diag(np.linalg.inv(hessian))
    except np.linalg.LinAlgError:
        return np.diag(np.linalg.pinv(hessian))


def variance_drift(hessian, hessian_before, ratio: float) -> float:
    """Largest relative change of the variances ``diag H^-1`` from ``hessian_before`` to ``hessian`` (over
    the last step), times ``ratio`` (the finish step's length over the last step's)."""
    now, before = _variances(hessian), _variances(hessian_before)
    positive = now > 0
    return ratio * float(np.max(np.abs(now[positive] - before[positive]) / now[positive], initial=0.0))


def finish_ready(options: LMOptions, hessian, gradient, theta, lower, upper, last_step, hessian_before) -> np.ndarray | None:
    """The finish step (free parameters) when it may end the fit, else None: Newton's steps contract
    (``contraction <= finish_contraction``) and the variances barely move over the finish
    (``variance_drift <= finish_drift_tol``, when set); never before the first accepted step."""
    if last_step is None or hessian_before is None:
        return None
    finish = finish_step(hessian, gradient, theta, lower, upper)
    ratio = contraction(hessian, last_step, finish)
    if ratio > options.finish_contraction:
        return None
    if options.finish_drift_tol > 0 and variance_drift(hessian, hessian_before, ratio) > options.finish_drift_tol:
        return None
    return finish


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
    finish: np.ndarray | None = None  # the finish step that ended the fit (free parameters)
    last_step: np.ndarray | None = None  # the last accepted step over the free parameters
    last_hessian: np.ndarray | None = None  # the system before that step
    iteration = first_iteration - 1
    for iteration in range(first_iteration, options.max_iterations + 1):
        start = time.perf_counter()
        h_free, g_free = hessian[np.ix_(free, free)], gradient[free]
        cosine = projected_cosine(theta[free], h_free, g_free, cost, lo, hi)
        if cosine <= options.gtol:
            converged, reason = True, f"gtol: projected gradient cosine {cosine:.2e} <= {options.gtol:g}"
            iteration -= 1
            break
        if options.decrement_tol > 0 or options.finish_step:
            decrement = newton_decrement(theta[free], h_free, g_free, lo, hi)
            finish_tol = max(options.finish_decrement_tol, options.decrement_tol)
            if options.finish_step and decrement <= finish_tol:
                before = None if last_hessian is None else last_hessian[np.ix_(free, free)]
                finish = finish_ready(options, h_free, g_free, theta[free], lo, hi, last_step, before)
            if finish is not None or (options.decrement_tol > 0 and decrement <= options.decrement_tol):
                tol = finish_tol if finish is not None else options.decrement_tol
                converged, reason = True, f"decrement: g^T H^-1 g {decrement:.2e} <= {tol:.2e}"
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
        last_step, last_hessian = step, hessian
        theta, hessian, gradient, chi2, cost = trial, t_hessian, t_gradient, t_chi2, t_cost
        if relative_actual <= options.ftol and relative_predicted <= options.ftol:
            converged, reason = True, f"ftol: relative cost reduction {relative_actual:.2e} <= {options.ftol:g}"
            break
        if step_norm <= options.xtol * (theta_norm + options.xtol):
            converged, reason = True, f"xtol: relative step {step_norm / max(theta_norm, 1e-300):.2e} <= {options.xtol:g}"
            break
    h_free, g_free = hessian[np.ix_(free, free)], gradient[free]
    final_cosine = projected_cosine(theta[free], h_free, g_free, cost, lo, hi)
    if finish is not None:
        theta = theta.copy()
        theta[free] += finish
        reason += "; finished with a Newton step"
    return LMResult(
        theta,
        converged,
        reason,
        iteration,
        float(chi2),
        float(cost),
        hessian,
        gradient,
        history,
        final_cosine,
        finish is not None,
    )
