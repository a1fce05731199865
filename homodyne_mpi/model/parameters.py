"""Layout of the fitted parameter vector for each per-angle scaling mode.

Order everywhere (``docs/architecture.md``, "The model"): ``contrast..., offset..., D0, alpha, D_offset,
gamma_dot_t0, beta, gamma_dot_t_offset, phi0``.

- ``individual``: one contrast and one offset per angle (``contrast[i]``, ``offset[i]``);
- ``averaged``: one shared pair (``contrast``, ``offset``);
- ``fixed``: no scaling parameters; contrast and offset come from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..vocabulary import PHYSICAL_PARAMETERS, SCALING_MODES


@dataclass(frozen=True)
class ParameterLayout:
    """Maps the flat parameter vector to per-angle contrast/offset and physical values."""

    analysis_mode: str
    n_angles: int
    scaling: str = "individual"
    fixed_contrast: tuple[float, ...] | None = None
    """Per-angle contrast used when ``scaling == 'fixed'``."""
    fixed_offset: tuple[float, ...] | None = None
    """Per-angle offset used when ``scaling == 'fixed'``."""

    def __post_init__(self) -> None:
        if self.scaling not in SCALING_MODES:
            raise ValueError(f"scaling must be one of {SCALING_MODES}, got {self.scaling!r}")
        if self.n_angles < 1:
            raise ValueError("ParameterLayout needs at least one angle")
        if self.scaling == "fixed":
            for name, values in (("contrast", self.fixed_contrast), ("offset", self.fixed_offset)):
                if values is None or len(values) != self.n_angles:
                    raise ValueError(f"fixed scaling needs one {name} per angle ({self.n_angles})")

    @property
    def physical_names(self) -> tuple[str, ...]:
        """Physical parameter names in canonical order."""
        return PHYSICAL_PARAMETERS[self.analysis_mode]

    @property
    def n_scaling_pairs(self) -> int:
        """Number of fitted (contrast, offset) pairs: angles, 1 or 0."""
        return {"individual": self.n_angles, "averaged": 1, "fixed": 0}[self.scaling]

    @property
    def n_physical(self) -> int:
        """Number of physical parameters."""
        return len(self.physical_names)

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        return 2 * self.n_scaling_pairs + self.n_physical

    @property
    def names(self) -> list[str]:
        """Parameter names in vector order: ``contrast[a]``/``offset[a]``, ``contrast``/``offset`` when shared."""
        pairs = [""] * self.n_scaling_pairs
        if self.scaling == "individual":
            pairs = [f"[{a}]" for a in range(self.n_angles)]
        return [f"{name}{pair}" for name in ("contrast", "offset") for pair in pairs] + list(self.physical_names)

    @property
    def physical_slice(self) -> slice:
        """Slice of the physical parameters in the flat vector."""
        return slice(2 * self.n_scaling_pairs, self.n_params)

    def scaling_pair_of_angle(self) -> np.ndarray:
        """Index of the fitted (contrast, offset) pair that each angle uses (-1 if fixed)."""
        pair = {"individual": np.arange(self.n_angles), "averaged": 0, "fixed": -1}[self.scaling]
        return np.full(self.n_angles, pair)

    def split(self, theta):
        """``(contrast[n_angles], offset[n_angles], physical)`` from the flat vector."""
        theta = jnp.asarray(theta)
        pairs = self.n_scaling_pairs
        physical = theta[2 * pairs :]
        if self.scaling == "individual":
            return theta[:pairs], theta[pairs : 2 * pairs], physical
        if self.scaling == "averaged":
            ones = jnp.ones(self.n_angles, dtype=theta.dtype)
            return theta[0] * ones, theta[1] * ones, physical
        return (jnp.asarray(self.fixed_contrast, dtype=theta.dtype), jnp.asarray(self.fixed_offset, dtype=theta.dtype), physical)

    def join(self, contrast, offset, physical) -> np.ndarray:
        """Flat vector from per-angle contrast/offset (averaged over angles if shared)."""
        contrast = np.broadcast_to(np.asarray(contrast, dtype=float), (self.n_angles,))
        offset = np.broadcast_to(np.asarray(offset, dtype=float), (self.n_angles,))
        physical = np.asarray(physical, dtype=float)
        if self.scaling == "individual":
            return np.concatenate([contrast, offset, physical])
        if self.scaling == "averaged":
            return np.concatenate([[contrast.mean()], [offset.mean()], physical])
        return physical.copy()
