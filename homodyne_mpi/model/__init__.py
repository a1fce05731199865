"""The physics: pure JAX functions of (parameters, grid) -> c2. No I/O, no MPI."""

from .correlation import (
    c2_grid,
    c2_points,
    g1_squared_from_integrals,
    interval,
    shear_factor,
    shear_projection,
    sinc,
    transport_integrals,
)
from .parameters import SCALING_MODES, ParameterLayout
from .spec import ANALYSIS_MODES, PHYSICAL_PARAMETERS, SHEAR_FORMS, ModelSpec
from .transport import (
    RATE_FLOOR,
    cumulative_trapezoid,
    diffusion_integral,
    power_law_rate,
    rate_times,
    shear_integral,
)

__all__ = [
    "ANALYSIS_MODES",
    "PHYSICAL_PARAMETERS",
    "RATE_FLOOR",
    "SCALING_MODES",
    "SHEAR_FORMS",
    "ModelSpec",
    "ParameterLayout",
    "c2_grid",
    "c2_points",
    "cumulative_trapezoid",
    "diffusion_integral",
    "g1_squared_from_integrals",
    "interval",
    "power_law_rate",
    "rate_times",
    "shear_factor",
    "shear_integral",
    "shear_projection",
    "sinc",
    "transport_integrals",
]
