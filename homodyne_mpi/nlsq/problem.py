"""Building a fit problem from a data set and a config (rank 0, NumPy only)."""

from __future__ import annotations

import logging

import numpy as np

from ..data.loader import XPCSData
from ..data.noise import estimate_noise_sigmas
from ..model import ModelSpec, ParameterLayout
from .fit import NLSQProblem
from .start import scaling_from_data

log = logging.getLogger(__name__)


def model_spec(cfg, data: XPCSData) -> ModelSpec:
    """The model's fixed inputs: mode and form from the config, grid and q from the data."""
    return ModelSpec(
        mode=cfg.analysis_mode,
        shear_form=cfg.shear_form,
        q=float(data.q),
        dt=float(data.dt),
        n_frames=int(data.n_frames),
        gap=float(cfg.analyzer_parameters.geometry.stator_rotor_gap),
    )


def parameter_layout(cfg, n_angles: int) -> ParameterLayout:
    """The parameter vector's layout for the configured per-angle scaling."""
    scaling = cfg.initial_parameters.per_angle_scaling
    if scaling.mode == "fixed":
        contrast, offset = scaling.scaling_arrays(n_angles)
        return ParameterLayout(cfg.analysis_mode, n_angles, "fixed", tuple(map(float, contrast)), tuple(map(float, offset)))
    return ParameterLayout(cfg.analysis_mode, n_angles, scaling.mode)


def build_problem(cfg, data: XPCSData, *, noise_sigma: np.ndarray | None = None, scaling: tuple | None = None) -> NLSQProblem:
    """Starting point (``initial_parameters.values``, else mid-bounds; scaling read off the data), bounds,
    free mask and noise weights for fitting ``data``; ``noise_sigma`` and ``scaling`` (``(contrast,
    offset)``), per angle, replace what is read off ``data.c2`` (a streamed source's metadata suffices)."""
    spec = model_spec(cfg, data)
    layout = parameter_layout(cfg, data.n_angles)
    contrast0, offset0 = scaling_from_data(data.c2) if scaling is None else (np.asarray(s, dtype=float) for s in scaling)
    bounds = cfg.parameter_space
    c_lo, c_hi = bounds.bounds_for("contrast")
    o_lo, o_hi = bounds.bounds_for("offset")
    contrast0 = np.clip(contrast0, c_lo + 1e-3 * (c_hi - c_lo), c_hi)
    offset0 = np.clip(offset0, o_lo, o_hi)
    phys_lo, phys_hi = cfg.physical_bounds()
    theta0 = layout.join(contrast0, offset0, cfg.physical_initial_values())
    pairs = layout.n_scaling_pairs
    lower = np.concatenate([np.full(pairs, c_lo), np.full(pairs, o_lo), phys_lo])
    upper = np.concatenate([np.full(pairs, c_hi), np.full(pairs, o_hi), phys_hi])
    free = np.concatenate([np.ones(2 * pairs, dtype=bool), ~cfg.fixed_mask()])
    sigma = estimate_noise_sigmas(data.c2) if noise_sigma is None else np.asarray(noise_sigma, dtype=float)
    log.info("noise sigma per angle: %s", np.array2string(sigma, precision=4))
    return NLSQProblem(
        spec=spec,
        layout=layout,
        phi=np.asarray(data.phi, dtype=float),
        theta0=np.clip(theta0, lower, upper),
        lower=lower,
        upper=upper,
        free=free,
        n_points=int(data.n_points),
        noise_sigma=sigma,
    )
