"""The physics: pure JAX functions of (parameters, grid) -> c2. No I/O, no MPI."""

from .correlation import c2_grid, c2_points, g1_squared_from_integrals, interval, shear_projection, transport_integrals
from .parameters import ParameterLayout
from .spec import PHYSICAL_PARAMETERS, ModelSpec
from .transport import rate_times

__all__ = [
    "PHYSICAL_PARAMETERS",
    "ModelSpec",
    "ParameterLayout",
    "c2_grid",
    "c2_points",
    "g1_squared_from_integrals",
    "interval",
    "rate_times",
    "shear_projection",
    "transport_integrals",
]
