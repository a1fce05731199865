"""The fixed, non-fitted inputs of the model: geometry, time grid and model form."""

from __future__ import annotations

from dataclasses import dataclass

from ..vocabulary import ANALYSIS_MODES, PHYSICAL_PARAMETERS, SHEAR_FORMS


@dataclass(frozen=True)
class ModelSpec:
    """Everything the forward model needs besides the fitted parameters (hashable: a static jit argument)."""

    mode: str
    """``static`` or ``laminar_flow``."""
    shear_form: str
    """``paper`` (``sinc(Phi/2)``) or ``homodyne-v2`` (``sinc(Phi/(2 pi))**2``)."""
    q: float
    """Wavevector magnitude, 1/Angstrom."""
    dt: float
    """Time between frames, seconds."""
    n_frames: int
    """Number of frames in the fitted window; times are ``k * dt``, ``k = 0..n_frames-1``."""
    gap: float = 2.0e6
    """Stator-rotor gap ``h``, Angstrom (laminar flow only)."""

    def __post_init__(self) -> None:
        if self.mode not in ANALYSIS_MODES:
            raise ValueError(f"mode must be one of {ANALYSIS_MODES}, got {self.mode!r}")
        if self.shear_form not in SHEAR_FORMS:
            raise ValueError(f"shear_form must be one of {SHEAR_FORMS}, got {self.shear_form!r}")
        if not (self.q > 0 and self.dt > 0 and self.n_frames >= 2):
            raise ValueError("ModelSpec needs q > 0, dt > 0 and n_frames >= 2")

    @property
    def has_shear(self) -> bool:
        """True for laminar flow."""
        return self.mode == "laminar_flow"

    @property
    def physical_names(self) -> tuple[str, ...]:
        """Names of the physical parameters in canonical order."""
        return PHYSICAL_PARAMETERS[self.mode]

    @property
    def n_physical(self) -> int:
        """Number of physical parameters (3 static, 7 laminar flow)."""
        return len(self.physical_names)
