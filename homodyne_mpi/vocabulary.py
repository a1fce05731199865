"""Names shared by the config and the model: modes, forms, parameters (no JAX import)."""

from __future__ import annotations

ANALYSIS_MODES = ("static", "laminar_flow")
SHEAR_FORMS = ("paper", "homodyne-v2")
SCALING_MODES = ("individual", "averaged", "fixed")
FIT_MATRIX_MODES = ("auto", "full", "none")
"""Settings of ``output.fit_matrices``: which ``c2`` matrices ``nlsq/fit.h5`` keeps."""
PHYSICAL_PARAMETERS = {
    "static": ("D0", "alpha", "D_offset"),
    "laminar_flow": ("D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"),
}
"""Physical parameters of each mode, in the canonical order (``docs/architecture.md``, "The model")."""
PARAMETER_UNITS = {"D0": "Angstrom^2 s^-(1+alpha)", "alpha": "dimensionless", "D_offset": "Angstrom^2/s",
                   "gamma_dot_t0": "s^-(1+beta)", "beta": "dimensionless", "gamma_dot_t_offset": "1/s", "phi0": "degrees",
                   "contrast": "dimensionless", "offset": "dimensionless"}  # fmt: skip
"""Unit of each parameter, as plain text (the config template and ``homodyne-mpi report``)."""
