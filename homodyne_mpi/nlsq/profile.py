"""Profile check of the NLSQ error bars: does chi2 rise away from the optimum as the curvature says?

The model std of a parameter comes from the curvature of chi2 at the optimum: with the
other parameters refitted, chi2 should rise by ``(delta / std_model)^2`` reduced-chi2
units when the parameter is moved by ``delta``. In a flat, curved valley (``D0``,
``alpha`` and ``D_offset`` trading against each other) it rises far less, and the error
bar is too narrow however it is scaled. The check moves each free physical parameter to
``+-3 std_model`` (then 6, 12, 24 while the rise stays below 1), refits the others there,
and finds on each side the distance at which the rise reaches 1: the profile's 68%
half-width, in ``std_model`` units (1 for a quadratic profile). Every refit is collective
over the ranks (the objective's ordered reduction), so all ranks get the same numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .solver import LMOptions, levenberg_marquardt

log = logging.getLogger(__name__)

FIRST_PROBE = 3.0
"""Distance of the first probe on each side, in model std."""

FAR_PROBE = 24.0
"""Farthest probe, model std: a side that has not risen by 1 is probed at 6, 12 and 24 (each refit
starts from the one before, following a curved valley)."""

MAX_PROBES = 5
"""Probes per side at most (3, 6, 12 and 24 model std, and one closer in when the first is steep)."""

MIN_PASSES = 200
"""The check's budget of passes over the data is the larger of this and four times the fit's."""

STEEP_RISE = 25.0
"""A probe whose rise exceeds this is followed by one four times closer in (if probes are left)."""

WIDTH_LIMIT = 2.0
"""A half-width above this many model std is reported as an error bar that understates."""

PROFILE_ITERATIONS = 30
"""Iteration cap of a profile refit (each starts on the covariance's line through the optimum)."""

PROFILE_DECREMENT = 0.01
"""A profile refit stops when its Gauss-Newton decrement is below this many reduced-chi2 units:
the rise it reports is then within 0.01 of the refit's optimum, far below the 1 it is judged by."""


@dataclass
class ProfileSide:
    """One side of one parameter's profile."""

    offsets: list[float]
    """Probe distances from the optimum, model std (signed)."""
    rises: list[float]
    """``(chi2 - chi2_min) / reduced_chi2`` at each probe."""
    half_width: float
    """Distance at which the rise reaches 1, model std; a lower limit when ``reached`` is False."""
    reached: bool
    """Whether a probe rose by 1 (False: the bound or the last probe came first)."""
    converged: bool
    thetas: list[np.ndarray] = field(default_factory=list, repr=False)
    """The refitted parameter vector at each probe (not written to ``result.json``)."""


def half_width(offsets: list[float], rises: list[float]) -> tuple[float, bool]:
    """Distance (model std, unsigned) at which the rise first reaches 1, and whether it does.

    The probes are taken in order of distance, with the optimum (rise 0) first; between
    neighbours ``sqrt(rise)`` is interpolated linearly in the distance (exact for a
    quadratic profile). Past the farthest probe nothing is extrapolated: its distance is
    returned as a lower limit.
    """
    previous_offset, previous_root = 0.0, 0.0
    for offset, rise in sorted(zip(np.abs(offsets), rises)):
        root = math.sqrt(max(rise, 0.0))
        if root >= 1.0:
            return float(previous_offset + (1.0 - previous_root) * (offset - previous_offset) / (root - previous_root)), True
        previous_offset, previous_root = float(offset), root
    return previous_offset, False


def profile_side(
    objective, problem, theta_hat, covariance, chi2_min, reduced_chi2, index, sign, options: LMOptions, budget: list[int]
):
    """Probe one side of parameter ``index`` (``sign`` +1 or -1); a ``ProfileSide``. ``budget[0]``,
    the passes over the data left to the check, is decreased by each refit's passes (iterations + 1)."""
    std = math.sqrt(covariance[index, index])
    slope = covariance[:, index] / covariance[index, index]  # the covariance's line: d theta / d theta_index
    free = problem.free.copy()
    free[index] = False
    bound = problem.upper[index] if sign > 0 else problem.lower[index]
    offsets: list[float] = []
    rises: list[float] = []
    thetas: list[np.ndarray] = []
    converged = True
    start = np.asarray(theta_hat, dtype=float)
    distance, stepped_in = FIRST_PROBE, False
    while len(offsets) < MAX_PROBES and budget[0] > 1:
        target = theta_hat[index] + sign * distance * std
        target = min(target, bound) if sign > 0 else max(target, bound)
        if any(abs(o * std - (target - theta_hat[index])) <= 1e-12 * std for o in offsets):
            break  # probed already: the bound, or the steep first probe after stepping in and out
        shifted = np.clip(start + slope * (target - start[index]), problem.lower, problem.upper)
        shifted[index] = target
        capped = dataclasses.replace(options, max_iterations=min(options.max_iterations, budget[0] - 1))
        refit = levenberg_marquardt(objective, shifted, problem.lower, problem.upper, free, capped, quiet=True)
        budget[0] -= refit.iterations + 1
        converged = converged and refit.converged
        offsets.append(float((target - theta_hat[index]) / std))
        rises.append(float((refit.chi2 - chi2_min) / reduced_chi2))
        start = refit.theta
        thetas.append(refit.theta)
        if rises[-1] < 1.0 and target != bound and distance < FAR_PROBE:
            distance *= 2.0  # not risen by 1 yet: step out
        elif rises[-1] > STEEP_RISE and not stepped_in:
            distance, stepped_in = distance / 4.0, True  # far steeper than the curvature says: probe closer in
            start = np.asarray(theta_hat, dtype=float)
        else:
            break
    width, reached = half_width(offsets, rises)
    return ProfileSide(offsets=offsets, rises=rises, half_width=width, reached=reached, converged=converged, thetas=thetas)


def profile_check(result, problem, options: LMOptions) -> dict[str, tuple[ProfileSide, ProfileSide]]:
    """Both sides of the profile of every free physical parameter not held at a bound, in parameter
    order until the budget of passes (``MIN_PASSES``) is spent; the parameters left are not checked.

    ``result`` is an ``NLSQResult`` that still holds its objective.
    """
    started = time.perf_counter()
    budget = [max(MIN_PASSES, 4 * (result.iterations + 1))]
    physical = problem.layout.physical_slice
    fit = (result.objective, problem, result.theta, result.covariance, result.chi2, result.reduced_chi2)
    profiles: dict[str, tuple[ProfileSide, ProfileSide]] = {}
    for index in range(physical.start, physical.stop):
        if not problem.free[index] or (result.at_bound and result.at_bound[index]) or not result.covariance[index, index] > 0:
            continue
        if budget[0] <= 1:
            log.warning(
                "profile check: budget of passes spent; %s and the parameters after it are not checked", result.names[index]
            )
            break
        lower, upper = (profile_side(*fit, index, sign, options, budget) for sign in (-1, 1))
        profiles[result.names[index]] = (lower, upper)
        log.info(
            "profile of %s: half-widths %.2f%s / %.2f%s model std (1 for a quadratic chi2)",
            result.names[index],
            lower.half_width,
            "" if lower.reached else "+",
            upper.half_width,
            "" if upper.reached else "+",
        )
    log.info("profile check: %d parameters in %.2f s", len(profiles), time.perf_counter() - started)
    return profiles


def profile_document(profiles: dict[str, tuple[ProfileSide, ProfileSide]], names: list[str], theta, covariance) -> dict:
    """``result.json``'s ``profile`` entries: per parameter ``minus`` and ``plus``, each with the
    probes, the half-width (model std), whether it was reached, and ``value``: the parameter
    value at the half-width (where chi2 has risen by 1, or the farthest probe)."""
    document = {}
    for name, sides in profiles.items():
        k = names.index(name)
        std = math.sqrt(covariance[k, k])
        document[name] = {
            label: {
                **{key: value for key, value in asdict(side).items() if key != "thetas"},
                "value": float(theta[k] + sign * side.half_width * std),
            }
            for label, sign, side in zip(("minus", "plus"), (-1, 1), sides)
        }
    return document


def wide_sides(document: dict) -> list[tuple[str, str, dict]]:
    """``(name, side, entry)`` for every profile side wider than ``WIDTH_LIMIT`` model std."""
    return [
        (name, label, entry)
        for name, sides in document.items()
        for label, entry in sides.items()
        if entry["half_width"] > WIDTH_LIMIT
    ]


def valley_ends(profiles: dict[str, tuple[ProfileSide, ProfileSide]]) -> list[tuple[str, str, np.ndarray]]:
    """The refitted parameter vectors beyond ``WIDTH_LIMIT`` model std on every wide side, as
    ``(name, side, theta)``: the farthest of each side first, then the next ones, sides interleaved.
    CMC starts chains there, so that a chain is placed at each far end of a flat valley."""
    per_side = [
        [
            (name, label, theta)
            for offset, theta in sorted(zip(np.abs(side.offsets), side.thetas), key=lambda p: -p[0])
            if offset > WIDTH_LIMIT
        ]
        for name, sides in profiles.items()
        for label, side in zip(("minus", "plus"), sides)
        if side.half_width > WIDTH_LIMIT
    ]
    return [ends[rank] for rank in range(MAX_PROBES) for ends in per_side if rank < len(ends)]
