"""Load one data set: the selected angles' two-time matrices at one q, over a frame window.

:func:`load_xpcs` reads the selected matrices one at a time, sliced to the window and rebuilt full
symmetric in float64 (peak memory: the result plus one stored window). Every problem is a one-line
:class:`~homodyne_mpi.errors.InputError` naming the file, key and fix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from homodyne_mpi.errors import ConfigError, InputError, check_path

from . import layouts
from .selection import angles_in_ranges, format_ranges, frame_window, full_symmetric, select_nearest_q

logger = logging.getLogger(__name__)

_Q_WARN_RELATIVE = 0.05
"""Warn when the selected q differs from the requested one by more than this fraction."""

_DT_WARN_RELATIVE = 1e-3
"""Warn when the config's dt and the file's frame period differ by more than this."""

_FINITE_CHECK_ROWS = 1024


@dataclass
class XPCSData:
    """One data set ready to fit: full symmetric ``c2`` per angle at one q."""

    c2: np.ndarray
    """Two-time correlation over the frame window, float64, symmetric, ``(n_angles, n_frames, n_frames)``."""
    phi: np.ndarray
    """Azimuthal angle of each matrix, degrees, ascending (as stored in the file)."""
    q: float
    """Wavevector of the selected bins, 1/Angstrom."""
    dt: float
    """Time between frames, seconds."""
    start_frame: int
    """First frame of the window, 1-based, inclusive (resolved)."""
    end_frame: int
    """Last frame of the window, 1-based, inclusive (resolved)."""
    source: str
    """Path of the file the data came from."""
    layout: str
    """``aps-u`` or ``aps-legacy``."""
    dt_source: str
    """``config`` (given by the caller) or ``file`` (frame_time x stride x avg)."""

    @property
    def n_angles(self) -> int:
        """Number of angles (matrices)."""
        return int(self.c2.shape[0])

    @property
    def n_frames(self) -> int:
        """Frames in the window, ``end_frame - start_frame + 1``."""
        return int(self.c2.shape[-1])

    @property
    def t(self) -> np.ndarray:
        """Model times of the window's frames, ``k * dt`` for ``k = 0..n_frames-1`` (s)."""
        return np.arange(self.n_frames, dtype=np.float64) * self.dt

    @property
    def n_points(self) -> int:
        """Points that enter a fit: the strict upper triangles, ``n_angles*N*(N-1)/2``."""
        n = self.n_frames
        return self.n_angles * n * (n - 1) // 2

    def full_rows(self, angle: int, row_start: int, row_stop: int, step: int = 1) -> np.ndarray:
        """Rows ``row_start:row_stop:step``, columns ``::step`` of angle ``angle``'s ``c2``, a float64 copy
        (as ``PointSource.full_rows``, so ``fit.h5`` is written from either the same way)."""
        return np.array(self.c2[angle, row_start:row_stop:step, ::step], dtype=np.float64)


def _open(path: Path) -> h5py.File:
    source = str(path)
    check_path(
        path,
        InputError,
        "file not found; fix experimental_data.file_path (or the dataset path) to point at an existing correlator result",
        "is a folder, not a file; set experimental_data.file_path to the HDF5 result file inside it",
    )
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise InputError(f"{source}: cannot read the file ({exc}); check its permissions") from exc
    if not is_hdf5:
        raise InputError(
            f"{source}: not an HDF5 file (no HDF5 signature); experimental_data.file_path must "
            "name the correlator's .hdf/.h5 result"
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{source}: cannot open the HDF5 file ({exc}); the file may be damaged") from exc


def _count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN/inf entries, in row blocks (no N x N boolean temporary)."""
    if array.dtype.kind in "iu":
        return 0
    blocks = (array[row : row + _FINITE_CHECK_ROWS] for row in range(0, array.shape[0], _FINITE_CHECK_ROWS))
    return sum(block.size - int(np.count_nonzero(np.isfinite(block))) for block in blocks)


def _resolve_dt(h5: h5py.File, dt: float | None, source: str) -> tuple[float, str]:
    """``(dt, 'config'|'file')``; the file's period is used (and logged) when ``dt`` is None."""
    if isinstance(dt, str) and dt.strip().lower() == "auto":
        dt = None
    if dt is None:
        period = layouts.read_frame_period(h5)
        if period is None:
            raise InputError(
                f"{source}: no dt: analyzer_parameters.dt is auto but the file has no "
                f"'{layouts.FRAME_TIME_KEY}'; set analyzer_parameters.dt (seconds per frame) in the config"
            )
        factors = (period.frame_time, period.stride_frame, period.avg_frame, period.dt, *layouts.FRAME_PERIOD_KEYS)
        logger.info("dt taken from file: frame_time x stride x avg = %g s x %d x %d = %g s (%s, %s, %s)", *factors)
        return period.dt, "file"
    try:
        period = layouts.read_frame_period(h5)
    except InputError:  # the file's period only serves the consistency warning below
        period = None
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise InputError(f"{source}: analyzer_parameters.dt is {dt!r}; use a positive number of seconds or 'auto'") from None
    if not (np.isfinite(dt) and dt > 0):
        raise InputError(f"{source}: analyzer_parameters.dt is {dt}; use a positive number of seconds or 'auto'")
    if period is not None and abs(period.dt - dt) > _DT_WARN_RELATIVE * dt:
        differs = "differs from the file's frame period (%g s = frame_time x stride x avg); using the config's"
        logger.warning("dt from the config (%g s) " + differs, dt, period.dt)
    return dt, "config"


def _select_matrices(h5: h5py.File, source: str, target_q: float | None, phi_ranges, warn: bool = True) -> tuple:
    """``(layout, q, phi, [(key, dataset), ...])``: the matrices at the q nearest ``target_q``
    (``None``: the first q stored), angles in ``phi_ranges``, sorted ascending; all of one
    shape. Reads no matrix data; ``warn`` logs a distant q."""
    layout = layouts.detect_layout(h5)
    table = layouts.read_bin_table(h5, layout)
    target_q = float(table.q.reshape(-1)[0]) if target_q is None else float(target_q)

    chosen, q_selected = select_nearest_q(table.q, target_q)
    if warn and abs(q_selected - target_q) > _Q_WARN_RELATIVE * target_q:
        stored = np.array2string(np.unique(table.q), precision=6)
        message = "%s: no bin near wavevector_q = %g 1/A; using the nearest, q = %g 1/A (stored q: %s)"
        logger.warning(message, source, target_q, q_selected, stored)
    phi_at_q = table.phi[chosen]
    if phi_ranges is not None:
        ranges = list(phi_ranges)
        keep = angles_in_ranges(phi_at_q, ranges)
        if not np.any(keep):
            available = ", ".join(f"{a:g}" for a in np.sort(phi_at_q))
            raise InputError(
                f"{source}: no angle left after phi_filtering: the angles at q = {q_selected:g} 1/A are [{available}] degrees "
                f"and phi_filtering.target_ranges is {format_ranges(ranges)}; widen the ranges or disable phi_filtering"
            )
        chosen = chosen[keep]
    order = np.argsort(table.phi[chosen], kind="stable")
    chosen = chosen[order]
    phi = table.phi[chosen].astype(np.float64)

    datasets = [(table.matrix_keys[b], layouts.matrix_dataset(h5, table.matrix_keys[b], layout)) for b in chosen]
    first_key, first = datasets[0]
    for key, dataset in datasets[1:]:
        if dataset.shape != first.shape:
            raise InputError(
                f"{source}: dataset '{key}' has shape {dataset.shape} but '{first_key}' has {first.shape}; all matrices at one "
                "q must cover the same frames -- the file is inconsistent"
            )
    return layout, q_selected, phi, datasets


def load_xpcs(
    path: str | os.PathLike[str],
    *,
    wavevector_q: float | None,
    phi_ranges=None,
    start_frame: int | None = 1,
    end_frame: int | None = None,
    dt: float | None = None,
) -> XPCSData:
    """Load the data set at the q nearest ``wavevector_q`` (1/Angstrom; ``None``: the first q stored).

    ``phi_ranges``: inclusive ``(min, max)`` degree ranges or ``AngleRange`` objects, modulo 360 (``None``:
    every angle); ``start_frame``, ``end_frame``: 1-based inclusive window; ``dt``: seconds per frame,
    ``None`` or ``'auto'`` for the file's frame period. Angles come ascending; problems raise :class:`InputError`.
    """
    file_path = Path(os.fspath(path))
    source = str(file_path)
    try:
        target_q = None if wavevector_q is None else float(wavevector_q)
    except (TypeError, ValueError):
        target_q = float("nan")
    if target_q is not None and not (np.isfinite(target_q) and target_q > 0):
        raise InputError(
            f"{source}: analyzer_parameters.scattering.wavevector_q is {wavevector_q!r}; use a positive number in 1/Angstrom"
        )
    with _open(file_path) as h5:
        layout, q, phi, datasets = _select_matrices(h5, source, target_q, phi_ranges)
        start, end = frame_window(start_frame, end_frame, datasets[0][1].shape[0], source=source)
        dt_value, dt_source = _resolve_dt(h5, dt, source)

        window = slice(start - 1, end)
        n = end - start + 1
        c2 = np.empty((len(datasets), n, n), dtype=np.float64)
        for index, (key, dataset) in enumerate(datasets):
            try:
                stored = dataset[window, window]
            except (OSError, ValueError, TypeError) as exc:
                raise InputError(
                    f"{source}: cannot read dataset '{key}' ({exc}); the file is damaged -- "
                    "rerun the correlator or exclude that angle with phi_filtering"
                ) from exc
            bad = _count_nonfinite(stored)
            if bad:
                raise InputError(
                    f"{source}: dataset '{key}' (phi = {phi[index]:g} deg) has {bad} NaN/inf values in frames {start}..{end}; "
                    "exclude that angle with phi_filtering or choose a frame window without them"
                )
            full_symmetric(stored, out=c2[index])
            del stored

    loaded = (source, layout, q, len(phi), start, end, n, dt_value, dt_source)
    logger.info("%s: %s layout, q = %g 1/A, %d angles, frames %d..%d (%d), dt = %g s (%s)", *loaded)
    return XPCSData(c2, phi, q, dt_value, start, end, source, layout, dt_source)


def config_dataset_arguments(cfg, dataset=None) -> tuple:
    """``(path, keyword arguments of load_xpcs)`` for a data set of a ``HomodyneConfig``.

    ``dataset``: ``None`` for the config's only dataset (several raise :class:`ConfigError`), a
    ``DatasetConfig``-like object (``file_path``, its own ``wavevector_q`` if any) or a path. Angle
    ranges apply only when ``phi_filtering.enabled``; frames and ``dt`` come from ``analyzer_parameters``.
    """
    analyzer = cfg.analyzer_parameters
    wavevector_q = analyzer.scattering.wavevector_q
    if dataset is None:
        resolver = getattr(cfg, "resolved_datasets", None)
        if callable(resolver):
            entries = resolver()
            if len(entries) != 1:
                names = ", ".join(str(getattr(entry, "name", entry)) for entry in entries)
                raise ConfigError(
                    f"config: experimental_data lists {len(entries)} datasets ({names}); "
                    "load them one at a time by passing each of cfg.resolved_datasets()"
                )
            dataset = entries[0]
        else:
            dataset = cfg.experimental_data.file_path
            if dataset is None:
                raise ConfigError("config: experimental_data.file_path is not set; give the correlator result file")
    if hasattr(dataset, "file_path"):
        path = dataset.file_path
        own_q = getattr(dataset, "wavevector_q", None)
        if own_q:
            wavevector_q = own_q[0] if isinstance(own_q, (list, tuple)) else own_q
    else:
        path = dataset
    ranges = None
    if cfg.phi_filtering.enabled:
        ranges = list(cfg.phi_filtering.target_ranges)
        if not ranges:
            raise ConfigError(
                "config: phi_filtering.enabled is true but phi_filtering.target_ranges is "
                "empty; add ranges such as [{min_angle: -10, max_angle: 10}] or set enabled: false"
            )
    window = {"start_frame": analyzer.start_frame, "end_frame": analyzer.end_frame}
    return path, {"wavevector_q": wavevector_q, "phi_ranges": ranges, **window, "dt": analyzer.dt}


def load_config_dataset(cfg, dataset=None) -> XPCSData:
    """:func:`load_xpcs` with the arguments of a ``HomodyneConfig`` (see ``config_dataset_arguments``)."""
    path, arguments = config_dataset_arguments(cfg, dataset)
    return load_xpcs(path, **arguments)


def count_config_dataset_points(cfg, dataset) -> int:
    """Points a data set will fit (``n_angles * N * (N - 1) / 2``), from the file's metadata only;
    0 when the file cannot be opened or does not fit the config (the load then reports why)."""
    try:
        path, arguments = config_dataset_arguments(cfg, dataset)
        source = str(path)
        with _open(Path(os.fspath(path))) as h5:
            _, _, _, datasets = _select_matrices(h5, source, arguments["wavevector_q"], arguments["phi_ranges"], warn=False)
            start, end = frame_window(arguments["start_frame"], arguments["end_frame"], datasets[0][1].shape[0], source=source)
    except (InputError, ConfigError, OSError, TypeError, ValueError):
        return 0
    n = end - start + 1
    return len(datasets) * n * (n - 1) // 2
