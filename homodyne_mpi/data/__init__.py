"""Data in: :func:`load_xpcs` / :func:`load_config_dataset` read either correlator layout into an
:class:`XPCSData` (full symmetric float64 ``c2`` per angle at one q, over a frame window); selection,
noise level and synthetic files (:func:`simulate_dataset`). Importing this package does not import JAX."""

from .loader import XPCSData, load_config_dataset, load_xpcs
from .noise import estimate_noise_sigma, estimate_noise_sigmas
from .selection import angles_in_ranges, frame_window, full_symmetric, is_triangular_half, select_nearest_q
from .simulate import DEFAULT_SIMULATED_PHI, simulate_dataset, truth_path
from .simulate_config import simulate_from_config

__all__ = [
    "DEFAULT_SIMULATED_PHI",
    "XPCSData",
    "angles_in_ranges",
    "estimate_noise_sigma",
    "estimate_noise_sigmas",
    "frame_window",
    "full_symmetric",
    "is_triangular_half",
    "load_config_dataset",
    "load_xpcs",
    "select_nearest_q",
    "simulate_dataset",
    "simulate_from_config",
    "truth_path",
]
