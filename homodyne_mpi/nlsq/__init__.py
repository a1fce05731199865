"""Streamed Levenberg-Marquardt: chunk kernels, solver and the distributed driver."""

from .fit import NLSQProblem, NLSQResult, distribute_points, fit_nlsq
from .problem import build_problem
from .solver import LMOptions, LMResult, levenberg_marquardt

__all__ = [
    "LMOptions",
    "LMResult",
    "NLSQProblem",
    "NLSQResult",
    "build_problem",
    "distribute_points",
    "fit_nlsq",
    "levenberg_marquardt",
]
