"""Streamed Levenberg-Marquardt: chunk kernels, solver and the distributed driver."""

from .fit import NLSQProblem, NLSQResult, distribute_points, fit_nlsq
from .jackknife import attach_jackknife, fit_with_uncertainty
from .problem import build_problem
from .solver import LMOptions, LMResult, levenberg_marquardt

__all__ = [
    "LMOptions",
    "LMResult",
    "NLSQProblem",
    "NLSQResult",
    "attach_jackknife",
    "fit_with_uncertainty",
    "build_problem",
    "distribute_points",
    "fit_nlsq",
    "levenberg_marquardt",
]
