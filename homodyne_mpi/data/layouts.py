"""The two HDF5 layouts of the APS 8-ID-I correlator, told apart by their keys.

- **APS-U** (``aps-u``, what ``boost_corr`` writes): q (1/Angstrom) and phi (degrees) lists in
  ``xpcs/qmap/dynamic_v_list_dim0``/``dim1``, 1-based q-major bin labels in ``xpcs/twotime/processed_bins``
  (``bin - 1 = q_index * n_phi + phi_index``) and, in that order, one matrix per processed bin,
  ``xpcs/twotime/correlation_map/c2_00001``, ... (a missing matrix is an error, never a shift).
- **APS legacy** (``aps-legacy``): one ``(q, phi)`` per bin in ``xpcs/dqlist`` and ``xpcs/dphilist``
  (shape ``(1, n_bins)``), the matrices ``exchange/C2T_all/<key>`` in natural key order.

Both may carry the frame period (:class:`FramePeriod`). Nothing here reads a matrix; every problem
raises a one-line :class:`~homodyne_mpi.errors.InputError` that names the file, the key and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h5py
import numpy as np

from homodyne_mpi.errors import InputError

APS_U = "aps-u"
APS_LEGACY = "aps-legacy"
LAYOUTS = (APS_U, APS_LEGACY)

APS_U_Q_KEY = "xpcs/qmap/dynamic_v_list_dim0"
APS_U_PHI_KEY = "xpcs/qmap/dynamic_v_list_dim1"
APS_U_BINS_KEY = "xpcs/twotime/processed_bins"
APS_U_MATRIX_GROUP = "xpcs/twotime/correlation_map"
APS_U_KEYS = (APS_U_Q_KEY, APS_U_PHI_KEY, APS_U_BINS_KEY, APS_U_MATRIX_GROUP)

LEGACY_Q_KEY = "xpcs/dqlist"
LEGACY_PHI_KEY = "xpcs/dphilist"
LEGACY_MATRIX_GROUP = "exchange/C2T_all"
LEGACY_KEYS = (LEGACY_Q_KEY, LEGACY_PHI_KEY, LEGACY_MATRIX_GROUP)

FRAME_TIME_KEY = "entry/instrument/detector_1/frame_time"
STRIDE_FRAME_KEY = "xpcs/twotime/config/stride_frame"
AVG_FRAME_KEY = "xpcs/twotime/config/avg_frame"
FRAME_PERIOD_KEYS = (FRAME_TIME_KEY, STRIDE_FRAME_KEY, AVG_FRAME_KEY)
_USE_CONFIG_DT = "set analyzer_parameters.dt in the config instead of taking it from the file"


def aps_u_matrix_key(position: int) -> str:
    """Key of the matrix of the ``position``-th processed bin (0-based) in the APS-U layout."""
    return f"{APS_U_MATRIX_GROUP}/c2_{position + 1:05d}"


@dataclass(frozen=True)
class BinTable:
    """The ``(q, phi)`` of every stored matrix and where the matrix lives in the file."""

    layout: str
    """``aps-u`` or ``aps-legacy``."""
    q: np.ndarray
    """Wavevector of each bin, 1/Angstrom (float64, shape ``(n_bins,)``)."""
    phi: np.ndarray
    """Azimuthal angle of each bin, degrees, as stored (float64, shape ``(n_bins,)``)."""
    matrix_keys: tuple[str, ...]
    """Full HDF5 path of each bin's two-time matrix."""


@dataclass(frozen=True)
class FramePeriod:
    """The frame period stored by the correlator: ``frame_time * stride_frame * avg_frame`` (``frame_time`` at
    ``entry/instrument/detector_1/frame_time``, the others in ``xpcs/twotime/config``)."""

    frame_time: float
    """Detector frame time, seconds."""
    stride_frame: int
    """Frames skipped between correlated frames (1 = every frame)."""
    avg_frame: int
    """Frames averaged into one correlated frame."""

    @property
    def dt(self) -> float:
        """Time between the frames of the two-time matrices, seconds."""
        return self.frame_time * self.stride_frame * self.avg_frame


def detect_layout(h5: h5py.File) -> str:
    """``aps-u`` or ``aps-legacy`` from the keys present (all of a layout's keys, APS-U first, else the
    larger share, so that the missing keys are reported as such); :class:`InputError` if neither."""
    aps_u = sum(key in h5 for key in APS_U_KEYS)
    legacy = sum(key in h5 for key in LEGACY_KEYS)
    if aps_u == 0 and legacy == 0:
        raise InputError(
            f"{h5.filename}: unknown HDF5 layout: found none of the APS-U keys ({', '.join(APS_U_KEYS)}) nor the APS "
            f"legacy keys ({', '.join(LEGACY_KEYS)}); point experimental_data.file_path at a two-time correlation result of the "
            "APS 8-ID-I correlator"
        )
    if aps_u == len(APS_U_KEYS):
        return APS_U
    if legacy == len(LEGACY_KEYS):
        return APS_LEGACY
    return APS_U if aps_u / len(APS_U_KEYS) >= legacy / len(LEGACY_KEYS) else APS_LEGACY


def _require(h5: h5py.File, key: str, layout: str, kind=h5py.Dataset):
    """The object at ``key``, of the given kind, or a one-line :class:`InputError`."""
    if key not in h5:
        raise InputError(
            f"{h5.filename}: missing key '{key}' needed by the {layout} layout; the file is incomplete or not a two-time "
            "correlation result -- rerun the correlator or pick another file"
        )
    obj = h5[key]
    if not isinstance(obj, kind):
        what = "dataset" if kind is h5py.Dataset else "group"
        raise InputError(
            f"{h5.filename}: key '{key}' is not an HDF5 {what} as the {layout} layout "
            "requires; the file is not a correlator result of that layout"
        )
    return obj


def _read_vector(h5: h5py.File, key: str, layout: str) -> np.ndarray:
    """A small 1-D list (q, phi or bins), flattening shapes such as ``(1, n)``."""
    dataset = _require(h5, key, layout)
    try:
        values = np.asarray(dataset[()])
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{h5.filename}: cannot read '{key}' ({exc}); the file is damaged") from exc
    if values.dtype.kind not in "fciu":
        raise InputError(
            f"{h5.filename}: '{key}' holds {values.dtype} values, expected numbers; the file is not a correlator result"
        )
    values = values.reshape(-1)
    if values.size == 0:
        raise InputError(f"{h5.filename}: '{key}' is empty; the file holds no processed bins")
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise InputError(f"{h5.filename}: '{key}' contains NaN or inf; the file is damaged -- rerun the correlator")
    return values


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_aps_u(h5: h5py.File) -> BinTable:
    source = h5.filename
    q_list = _read_vector(h5, APS_U_Q_KEY, APS_U).astype(np.float64)
    phi_list = _read_vector(h5, APS_U_PHI_KEY, APS_U).astype(np.float64)
    bins = _read_vector(h5, APS_U_BINS_KEY, APS_U)
    _require(h5, APS_U_MATRIX_GROUP, APS_U, kind=h5py.Group)
    if bins.dtype.kind == "f" and not np.all(bins == np.round(bins)):
        raise InputError(f"{source}: '{APS_U_BINS_KEY}' holds non-integer bin labels; the file is not a correlator result")
    bins = bins.astype(np.int64)
    n_q, n_phi = q_list.size, phi_list.size
    index = bins - 1
    bad = (index < 0) | (index >= n_q * n_phi)
    if np.any(bad):
        raise InputError(
            f"{source}: '{APS_U_BINS_KEY}' has bin {int(bins[bad][0])} outside 1..{n_q * n_phi} = len('{APS_U_Q_KEY}') {n_q} x "
            f"len('{APS_U_PHI_KEY}') {n_phi}; the q/phi lists do not match the processed bins -- the file is inconsistent"
        )
    q_index, phi_index = np.divmod(index, n_phi)
    keys = tuple(aps_u_matrix_key(position) for position in range(bins.size))
    return BinTable(APS_U, q_list[q_index], phi_list[phi_index], keys)


def _read_legacy(h5: h5py.File) -> BinTable:
    source = h5.filename
    q = _read_vector(h5, LEGACY_Q_KEY, APS_LEGACY).astype(np.float64)
    phi = _read_vector(h5, LEGACY_PHI_KEY, APS_LEGACY).astype(np.float64)
    group = _require(h5, LEGACY_MATRIX_GROUP, APS_LEGACY, kind=h5py.Group)
    if q.size != phi.size:
        raise InputError(
            f"{source}: '{LEGACY_Q_KEY}' has {q.size} entries but '{LEGACY_PHI_KEY}' has "
            f"{phi.size}; they must list one (q, phi) per bin -- the file is inconsistent"
        )
    names = sorted(group.keys(), key=_natural_key)
    if len(names) != q.size:
        raise InputError(
            f"{source}: '{LEGACY_MATRIX_GROUP}' holds {len(names)} matrices but '{LEGACY_Q_KEY}' lists {q.size} bins; every bin "
            "needs exactly one matrix -- the file is inconsistent"
        )
    keys = tuple(f"{LEGACY_MATRIX_GROUP}/{name}" for name in names)
    return BinTable(APS_LEGACY, q, phi, keys)


def read_bin_table(h5: h5py.File, layout: str | None = None) -> BinTable:
    """The ``(q, phi)`` and matrix key of every stored bin (``layout`` defaults to :func:`detect_layout`);
    reads no matrix, nor checks that the keys exist (:func:`matrix_dataset` does)."""
    layout = layout or detect_layout(h5)
    if layout == APS_U:
        return _read_aps_u(h5)
    if layout == APS_LEGACY:
        return _read_legacy(h5)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _scalar(h5: h5py.File, key: str) -> float:
    """The single number stored at ``key``; 1 when absent (the default of stride and avg)."""
    if key not in h5:
        return 1.0
    obj = h5[key]
    try:
        values = np.asarray(obj[()]).reshape(-1) if isinstance(obj, h5py.Dataset) else np.empty(0)
    except (OSError, ValueError, TypeError):
        values = np.empty(0)
    if values.size != 1 or values.dtype.kind not in "fiu":
        raise InputError(f"{h5.filename}: '{key}' is not a single number; {_USE_CONFIG_DT}")
    return float(values[0])


def read_frame_period(h5: h5py.File) -> FramePeriod | None:
    """The stored frame period, or ``None`` when ``frame_time`` is absent (``stride_frame`` and
    ``avg_frame`` default to 1); a present value that is not one positive number is an :class:`InputError`."""
    if FRAME_TIME_KEY not in h5:
        return None
    frame_time, stride, avg = (_scalar(h5, key) for key in FRAME_PERIOD_KEYS)
    for key, value in zip(FRAME_PERIOD_KEYS, (frame_time, stride, avg)):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{h5.filename}: '{key}' is {value}, not a positive number; {_USE_CONFIG_DT}")
    for key, value in ((STRIDE_FRAME_KEY, stride), (AVG_FRAME_KEY, avg)):
        if value != round(value):
            raise InputError(f"{h5.filename}: '{key}' is {value}, not a whole number of frames; {_USE_CONFIG_DT}")
    return FramePeriod(frame_time, int(round(stride)), int(round(avg)))


def matrix_dataset(h5: h5py.File, key: str, layout: str) -> h5py.Dataset:
    """The lazy dataset of one two-time matrix, checked to be a square 2-D array."""
    if key not in h5:
        raise InputError(
            f"{h5.filename}: missing key '{key}': a processed bin has no two-time matrix (bins are never shifted onto the "
            "next matrix); rerun the correlator or exclude that angle with phi_filtering"
        )
    dataset = h5[key]
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(f"{h5.filename}: key '{key}' is not a dataset; expected the two-time matrix of the {layout} layout")
    shape = dataset.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise InputError(
            f"{h5.filename}: dataset '{key}' has shape {shape}, expected a square "
            "(frames, frames) two-time matrix; the file is damaged or not a correlator result"
        )
    if dataset.dtype.kind not in "fiu":
        raise InputError(
            f"{h5.filename}: dataset '{key}' holds {dataset.dtype} values, expected "
            "real numbers; the file is not a correlator result"
        )
    return dataset
