"""Writing ``nlsq/fit.h5``: from the loaded matrices, or row block by row block from the file.

The loaded path (``write_fit_file``) holds the data set's ``c2`` and builds the fitted and
residual matrices in memory. The streamed path (``write_streamed_fit_file``) never holds
a whole matrix: it reopens the data set as a ``data.stream.PointSource``, and for each
block of rows of each angle reads the measured rows (``PointSource.full_rows``), computes
the model on those rows (``model.c2_points``, one compiled shape) and writes the three
row blocks into HDF5 datasets created at full size. The writer then holds about
``ROW_BLOCK_VALUES`` values of each of five arrays (``5 x 8 x ROW_BLOCK_VALUES`` bytes,
40 MiB) whatever ``N``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from .data.loader import XPCSData
from .model import c2_points
from .nlsq import NLSQProblem, NLSQResult
from .nlsq.results import fit_arrays, small_fit_arrays

ROW_BLOCK_VALUES = 1 << 20
"""Matrix entries per written row block (``k`` whole rows, ``k = max(1, ROW_BLOCK_VALUES // N)``)."""

MATRICES = ("c2_exp", "c2_fit", "residual")
"""The ``(n_angles, N, N)`` datasets of ``fit.h5``."""

compiled_c2_points = jax.jit(c2_points, static_argnames=("spec",))
"""``model.c2_points`` compiled once per spec and block shape."""


def write_attributes(handle: h5py.File, problem: NLSQProblem) -> None:
    """The model's mode, form, ``q`` (1/A) and ``dt`` (s) as file attributes."""
    handle.attrs["analysis_mode"] = problem.spec.mode
    handle.attrs["shear_form"] = problem.spec.shear_form
    handle.attrs["q"] = problem.spec.q
    handle.attrs["dt"] = problem.spec.dt


def write_fit_file(temp_path: Path, result: NLSQResult, problem: NLSQProblem, data: XPCSData, figures=None) -> None:
    """Writer thread: compute the fitted matrices and write ``nlsq/fit.h5`` at ``temp_path``.

    ``figures(arrays)``, when given, queues the figures drawn from the same arrays.
    """
    arrays = fit_arrays(result, problem, data)
    if figures is not None:
        figures(arrays)
    with h5py.File(temp_path, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=np.asarray(array))
        write_attributes(handle, problem)


def fitted_rows(result: NLSQResult, problem: NLSQProblem, angle: int, row_start: int, rows: int) -> np.ndarray:
    """Model ``c2`` of rows ``row_start .. row_start + rows`` of one angle, every column, ``(rows, N)``.

    Rows past the last frame are computed on the last frame (callers drop them), so one
    compiled shape serves every block of ``rows`` rows.
    """
    n = problem.spec.n_frames
    frame_i = np.minimum(np.arange(row_start, row_start + rows), n - 1).astype(np.int32)
    contrast, offset, physical = problem.layout.split(jnp.asarray(result.theta))
    values = compiled_c2_points(
        physical,
        contrast,
        offset,
        jnp.asarray(problem.phi),
        jnp.full(rows * n, angle, jnp.int32),
        jnp.asarray(np.repeat(frame_i, n)),
        jnp.asarray(np.tile(np.arange(n, dtype=np.int32), rows)),
        problem.spec,
    )
    return np.asarray(values).reshape(rows, n)


def write_streamed_fit_file(temp_path: Path, result: NLSQResult, problem: NLSQProblem, open_source) -> None:
    """Writer thread: ``nlsq/fit.h5`` written row block by row block (no whole matrix in memory).

    ``open_source()`` returns a fresh ``data.stream.PointSource`` of the fitted data set
    (closed here). The datasets are those of ``write_fit_file``, with the same values.
    """
    with open_source() as source, h5py.File(temp_path, "w") as handle:
        for name, array in small_fit_arrays(result, problem, source).items():
            handle.create_dataset(name, data=np.asarray(array))
        write_attributes(handle, problem)
        n = source.n_frames
        shape = (source.n_angles, n, n)
        rows = max(1, min(n, ROW_BLOCK_VALUES // max(n, 1)))
        chunks = (1, rows, n)
        datasets = {name: handle.create_dataset(name, shape=shape, dtype=np.float64, chunks=chunks) for name in MATRICES}
        for angle in range(source.n_angles):
            for r0 in range(0, n, rows):
                r1 = min(r0 + rows, n)
                measured = source.full_rows(angle, r0, r1)
                fitted = fitted_rows(result, problem, angle, r0, rows)[: r1 - r0]
                datasets["c2_exp"][angle, r0:r1] = measured
                datasets["c2_fit"][angle, r0:r1] = fitted
                datasets["residual"][angle, r0:r1] = measured - fitted
