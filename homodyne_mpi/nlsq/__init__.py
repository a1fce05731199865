"""Streamed Levenberg-Marquardt: chunk kernels, solver and the distributed driver."""

from .fit import NLSQProblem, NLSQResult, distribute_points, fit_nlsq
from .jackknife import attach_uncertainty, fit_with_uncertainty
from .problem import build_problem

__all__ = [
    "NLSQProblem",
    "NLSQResult",
    "attach_uncertainty",
    "build_problem",
    "distribute_points",
    "fit_nlsq",
    "fit_with_uncertainty",
]
