"""``homodyne-mpi simulate``: the grid, truth and scaling of a parsed config, handed to
:func:`homodyne_mpi.data.simulate.simulate_dataset`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from homodyne_mpi.errors import ConfigError, InputError

from .layouts import APS_U
from .selection import angles_in_ranges, format_ranges
from .simulate import DEFAULT_SIMULATED_PHI, per_angle_values, simulate_dataset

logger = logging.getLogger(__name__)


def _config_physical_values(cfg, mode: str) -> np.ndarray:
    """The config's initial values in canonical physical order, matched by name."""
    from homodyne_mpi.model import PHYSICAL_PARAMETERS

    if mode not in PHYSICAL_PARAMETERS:
        raise ConfigError(f"config: analysis_mode {mode!r} is unknown; use one of {tuple(PHYSICAL_PARAMETERS)}")
    initial = cfg.initial_parameters
    wanted = PHYSICAL_PARAMETERS[mode]
    names = list(initial.parameter_names or wanted)  # empty: canonical order
    values = initial.values
    if values is None:
        raise ConfigError(
            "config: simulate needs initial_parameters.values (the truth to simulate); "
            f"give one value per name in the order {', '.join(names)}"
        )
    values = list(values)
    if len(names) != len(values):
        raise ConfigError(
            f"config: initial_parameters.parameter_names has {len(names)} names but "
            f"initial_parameters.values has {len(values)} values; give one value per name"
        )
    by_name = dict(zip(names, values))
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ConfigError(
            f"config: initial_parameters.parameter_names lacks {missing} needed by {mode}; list {list(wanted)} with their values"
        )
    try:
        return np.array([float(by_name[name]) for name in wanted], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("config: initial_parameters.values must all be numbers") from None


def simulate_from_config(
    cfg,
    output: str | os.PathLike[str],
    *,
    layout: str = APS_U,
    phi: Sequence[float] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    dtype: str = "float64",
    noise_model: str = "gaussian",
) -> dict:
    """``homodyne-mpi simulate``: a synthetic file whose truth is the config's start point.

    Truth from ``initial_parameters``; grid from ``analyzer_parameters`` (numeric ``dt``, ``wavevector_q``,
    gap, ``end_frame`` frames in the file, ``start_frame..end_frame`` exactly the fitted model) and
    ``shear_form``. ``phi`` (degrees) defaults to :data:`DEFAULT_SIMULATED_PHI`; a warning lists the
    angles ``phi_filtering`` would drop. ``noise`` is :func:`simulate_dataset`'s ``noise_sigma``.
    """
    mode = cfg.analysis_mode
    analyzer = cfg.analyzer_parameters
    dt = analyzer.dt
    if dt is None or isinstance(dt, str) or isinstance(dt, bool):
        raise InputError(
            f"config: simulate needs analyzer_parameters.dt as a number of seconds, got {dt!r}; "
            "'auto' has no file to read it from -- set e.g. dt: 0.1"
        )
    start_frame, end_frame = analyzer.start_frame, analyzer.end_frame
    if end_frame is None:
        raise InputError(
            "config: simulate needs analyzer_parameters.end_frame (the number of frames to write); set it, e.g. end_frame: 1000"
        )
    if isinstance(start_frame, bool) or isinstance(end_frame, bool) or not (1 <= int(start_frame) < int(end_frame)):
        raise InputError(
            f"config: analyzer_parameters.start_frame={start_frame}, end_frame={end_frame}; "
            "simulate needs 1 <= start_frame < end_frame"
        )
    physical = _config_physical_values(cfg, mode)
    angles = np.asarray(DEFAULT_SIMULATED_PHI if phi is None else phi, dtype=np.float64).reshape(-1)
    scaling = cfg.initial_parameters.per_angle_scaling
    contrast = per_angle_values("contrast", scaling.contrast, angles.size)
    offset = per_angle_values("offset", scaling.offset, angles.size)

    if cfg.phi_filtering.enabled:
        ranges = list(cfg.phi_filtering.target_ranges)
        kept = angles_in_ranges(angles, ranges)
        if not np.all(kept):
            shown = ", ".join(f"{a:g}" for a in angles[kept]) or "none"
            advice = "pass --phi with angles inside the ranges to fit them all"
            message = "simulate: phi_filtering.target_ranges %s keeps %d of the %d simulated angles (%s); " + advice
            logger.warning(message, format_ranges(ranges), int(kept.sum()), angles.size, shown)

    if analyzer.scattering.wavevector_q is None:
        raise ConfigError(
            "simulate: analyzer_parameters.scattering.wavevector_q is null (the data file's q) -- "
            "give the q to simulate, in 1/Angstrom"
        )
    return simulate_dataset(
        output,
        mode=mode,
        shear_form=cfg.shear_form,
        q=analyzer.scattering.wavevector_q,
        dt=dt,
        n_frames=int(end_frame),
        physical=physical,
        contrast=contrast,
        offset=offset,
        phi=angles,
        noise_sigma=float(noise),
        seed=int(seed),
        layout=layout,
        dtype=dtype,
        noise_model=noise_model,
        start_frame=int(start_frame),
        gap=analyzer.geometry.stator_rotor_gap,
    )
