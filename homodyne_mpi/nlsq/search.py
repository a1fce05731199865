"""A coarse global search for the starting point of the Levenberg-Marquardt fit.

The laminar-flow model oscillates in the shear rate and a start far from the data's time
scale sees no gradient, so a local fit can stall in a wrong basin. A grid of physical
starting values is scored on a fixed subsample of global point indices (rank-independent),
each with contrast and offset *profiled out* (``c2`` is linear in them: one Gauss-Newton
step is exact); the best few are refined by a short fit and the best of those starts the fit.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from ..model import ParameterLayout
from .solver import Evaluation, LMOptions, levenberg_marquardt

log = logging.getLogger(__name__)

GRID_SIZES = {"D0": 5, "alpha": 3, "gamma_dot_t0": 8}
"""Grid points per searched parameter; the others keep their starting value."""

REFINED_CANDIDATES = 3
"""Best grid points refined by a short fit on the subsample."""

REFINE_ITERATIONS = 40
"""Iterations of each refinement."""


def subsample_indices(n_local: int, global_offset: int, stride: int) -> np.ndarray:
    """Local indices of this rank's points whose global index is a multiple of ``stride``
    (a strided range: a mask over ``n_local`` points took 17 bytes per point at its peak)."""
    stride = max(int(stride), 1)
    return np.arange((-global_offset) % stride, n_local, stride)


def parameter_grid(name: str, start: float, low: float, high: float) -> np.ndarray:
    """Grid values of one parameter inside its bounds (log-spaced for positive scales)."""
    size = GRID_SIZES.get(name, 1)
    if size == 1:
        return np.array([start])
    if name in ("D0", "gamma_dot_t0") and low > 0:
        return np.geomspace(low, high, size + 2)[1:-1]
    if name == "alpha":
        return np.clip(np.array([-1.0, 0.0, 1.0]), low, high)
    return np.linspace(low, high, size + 2)[1:-1]


def candidate_starts(theta0, lower, upper, free, layout: ParameterLayout) -> list[np.ndarray]:
    """The start itself and every other grid combination of the free searched parameters."""
    base = np.asarray(theta0, dtype=float)
    offset = layout.physical_slice.start
    axes = []
    for k, name in enumerate(layout.physical_names):
        index = offset + k
        if free[index] and name in GRID_SIZES:
            axes.append((index, parameter_grid(name, base[index], lower[index], upper[index])))
    candidates = [base.copy()]
    for values in itertools.product(*(grid for _, grid in axes)):
        candidate = base.copy()
        for (index, _), value in zip(axes, values):
            candidate[index] = value
        if not np.array_equal(candidate, base):  # a start on the grid is scored once
            candidates.append(candidate)
    return candidates


def profile_scaling(theta, evaluation: Evaluation, layout: ParameterLayout, lower, upper):
    """``(theta with profiled scaling, profiled chi2)``: the contrast/offset optimal for the
    physics of ``theta`` (``theta`` and its chi2 with ``fixed`` scaling)."""
    hessian, gradient, chi2, _ = evaluation
    pairs = layout.n_scaling_pairs
    theta = np.array(theta, dtype=float)
    reduction = 0.0
    for k in range(pairs):
        index = [k, pairs + k]
        block = hessian[np.ix_(index, index)]
        step = -np.linalg.lstsq(block, gradient[index], rcond=1e-12)[0]
        reduction += -float(gradient[index] @ step)
        theta[index] = np.clip(theta[index] + step, lower[index], upper[index])
    return theta, chi2 - reduction


def search_start(evaluate, theta0, lower, upper, free, layout: ParameterLayout) -> np.ndarray:
    """Best starting point of the grid and the short refinements on ``evaluate``, the subsample's objective."""
    candidates = candidate_starts(theta0, lower, upper, free, layout)
    scored = []
    for candidate in candidates:
        profiled, cost = profile_scaling(candidate, evaluate(candidate), layout, lower, upper)
        if np.isfinite(cost):
            scored.append((cost, profiled))
    scored.sort(key=lambda item: item[0])
    log.info("start search: %d grid points scored; best profiled chi2 %.6e", len(candidates), scored[0][0])
    options = LMOptions(max_iterations=REFINE_ITERATIONS, xtol=1e-6, gtol=1e-6, ftol=1e-6)
    best_cost, best_theta = np.inf, scored[0][1]
    for _cost, start in scored[:REFINED_CANDIDATES]:  # plain steps: docs/nlsq.md, "Starting values"
        refined = levenberg_marquardt(evaluate, start, lower, upper, free, options, quiet=True)
        if refined.cost < best_cost:
            best_cost, best_theta = refined.cost, refined.theta
    log.info("start search: refined best chi2 on the subsample %.6e", best_cost)
    return best_theta
