"""Data in: HDF5 readers for both correlator layouts, selection, noise level, simulation.

- :func:`load_xpcs` / :func:`load_config_dataset` -> :class:`XPCSData` (full symmetric
  float64 ``c2`` per angle at one q, over a frame window).
- :mod:`~homodyne_mpi.data.layouts`: APS-U and APS legacy keys, detection, bin table.
- :mod:`~homodyne_mpi.data.selection`: q selection, angle ranges (modulo 360 degrees),
  frame window, half-matrix rebuild.
- :func:`estimate_noise_sigma`: robust per-angle noise level.
- :func:`simulate_dataset` / :func:`simulate_from_config`: synthetic correlator files.

Importing this package does not import JAX: the simulator loads the model on first use.
"""

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
