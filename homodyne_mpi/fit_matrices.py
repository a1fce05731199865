"""Which frames the ``c2`` matrices of ``nlsq/fit.h5`` keep (``output.fit_matrices``).

The three ``c2`` matrices of ``N`` frames take ``3 x 8 N^2`` bytes per angle (24 GB at 20 angles of
10,000 frames). ``auto`` keeps all while ``N <= max_frames``, else the frames ``0, k, 2k, ...``,
``k = ceil(N / max_frames)`` (a subsample, not a block mean). ``fit.h5`` records the plan (``matrix_frames``,
``MatrixPlan.attributes``); an older file holds full matrices and no record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .vocabulary import FIT_MATRIX_MODES

MATRICES = ("c2_exp", "c2_fit", "residual")
"""The ``(n_angles, m, m)`` datasets of ``fit.h5``."""


@dataclass(frozen=True)
class MatrixPlan:
    """The frames whose ``c2`` matrices ``fit.h5`` keeps."""

    mode: str
    """``full``, ``downsampled`` or ``none`` (the ``fit_matrices`` attribute)."""
    step: int
    """Frames between kept rows, ``k`` (1 for ``full``, 0 for ``none``)."""
    frames: np.ndarray
    """Kept 0-based window frames, ``0, k, 2k, ... < N`` (int64; empty for ``none``)."""

    @property
    def side(self) -> int:
        """Rows (and columns) of each kept matrix, ``m``."""
        return int(self.frames.size)

    def summary(self, n_frames: int | None) -> str:
        """``keeps the c2 matrices on one frame in 5 (200 of 1000 frames)`` and the like."""
        if self.mode == "none":
            return "keeps no c2 matrices"
        of = "" if n_frames is None else f" of {n_frames}"
        if self.mode == "downsampled":
            return f"keeps the c2 matrices on one frame in {self.step} ({self.side}{of} frames)"
        return f"keeps the c2 matrices on all {self.side}{of} frames"

    def attributes(self) -> dict[str, Any]:
        """The ``fit.h5`` root attributes that record the plan."""
        return {"fit_matrices": self.mode, "matrix_frame_step": self.step}


NO_MATRICES = MatrixPlan("none", 0, np.zeros(0, dtype=np.int64))
"""The plan of ``output.fit_matrices: none``."""


def matrix_plan(setting: str, max_frames: int, n_frames: int) -> MatrixPlan:
    """The plan of ``output.fit_matrices`` = ``setting`` for a data set of ``n_frames`` frames."""
    if setting not in FIT_MATRIX_MODES:
        raise ValueError(f"fit_matrices must be one of {', '.join(FIT_MATRIX_MODES)}, got {setting!r}")
    if setting == "none":
        return NO_MATRICES
    if setting == "full" or n_frames <= max_frames:
        return MatrixPlan("full", 1, np.arange(n_frames, dtype=np.int64))
    step = math.ceil(n_frames / max_frames)
    return MatrixPlan("downsampled", step, np.arange(0, n_frames, step, dtype=np.int64))


def matrix_bytes(n_angles: int, plan: MatrixPlan) -> int:
    """Bytes of the three matrices of a plan: ``3 x 8 x n_angles x m^2``."""
    return len(MATRICES) * 8 * n_angles * plan.side**2  # float64


def matrix_frames_of(arrays: Any) -> np.ndarray | None:
    """The frames of the matrices in ``arrays`` (a dict or an open ``fit.h5``): ``matrix_frames``, else ``0 .. m-1``;
    None when there are no matrices."""
    if "c2_exp" not in arrays:
        return None
    if "matrix_frames" in arrays:
        return np.asarray(arrays["matrix_frames"][()], dtype=np.int64)
    return np.arange(np.shape(arrays["c2_exp"])[-1], dtype=np.int64)


def stored_plan(handle: Any) -> MatrixPlan:
    """The plan an open ``fit.h5`` was written with (a file without the record: ``full``)."""
    frames = matrix_frames_of(handle)
    if frames is None:
        return NO_MATRICES
    return MatrixPlan(str(handle.attrs.get("fit_matrices", "full")), int(handle.attrs.get("matrix_frame_step", 1)), frames)


def describe_fit_file(path: Path) -> str | None:
    """``fit.h5 keeps ...`` with the file's size in MB, for the report; None if it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            plan = stored_plan(handle)
            n_frames = int(handle["t"].shape[0]) if "t" in handle else None
        size = Path(path).stat().st_size
    except (OSError, KeyError, ValueError):
        return None
    return f"{plan.summary(n_frames)}, {size / 1e6:.3g} MB"
