"""Writing ``nlsq/fit.h5`` row block by row block, with the matrices ``output.fit_matrices`` keeps.

``c2_exp``, ``c2_fit``, ``residual`` ``(n_angles, m, m)`` are never built whole: per block of kept
rows, the measured rows come from the source's ``full_rows`` (a loaded ``XPCSData`` or a streamed
``PointSource`` write the same file), the model from ``model.c2_points`` (one compiled shape per
file): about ``5 x 8 x ROW_BLOCK_VALUES`` bytes (40 MiB) in memory whatever ``N``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import jax
import numpy as np

from .fit_matrices import MATRICES, MatrixPlan
from .model import ModelSpec, ParameterLayout, c2_points
from .nlsq import NLSQProblem, NLSQResult
from .nlsq.results import small_fit_arrays

ROW_BLOCK_VALUES = 1 << 20
"""Matrix entries per written row block (``r`` whole kept rows, ``r = max(1, ROW_BLOCK_VALUES // m)``)."""


@partial(jax.jit, static_argnames=("layout", "spec"))
def fitted_c2(theta, phi, angle_index, frame_i, frame_j, layout: ParameterLayout, spec: ModelSpec):
    """``model.c2_points`` at the flat parameter vector ``theta`` (split by ``layout`` inside the compiled
    function, so that no eager JAX operation is traced per job), compiled once per spec and block shape."""
    contrast, offset, physical = layout.split(theta)
    return c2_points(physical, contrast, offset, phi, angle_index, frame_i, frame_j, spec)


def block_rows(plan: MatrixPlan, block_values: int = ROW_BLOCK_VALUES) -> int:
    """Kept rows per written block: as many whole rows of ``m`` entries as fit in ``block_values``."""
    return max(1, min(plan.side, block_values // max(plan.side, 1)))


def fitted_rows(
    result: NLSQResult, problem: NLSQProblem, angle: int, row_frames: np.ndarray, column_frames: np.ndarray, rows: int
) -> np.ndarray:
    """Model ``c2`` of one angle at frames ``row_frames x column_frames`` (``row_frames`` padded to ``rows``, then
    dropped, so one compiled shape serves every block)."""
    frame_i = np.full(rows, row_frames[-1], dtype=np.int32)
    frame_i[: len(row_frames)] = row_frames
    columns = np.asarray(column_frames, dtype=np.int32)
    angles = np.full(rows * columns.size, angle, np.int32)
    points_i, points_j = np.repeat(frame_i, columns.size), np.tile(columns, rows)
    theta, phi = np.asarray(result.theta, dtype=np.float64), np.asarray(problem.phi, dtype=np.float64)
    values = fitted_c2(theta, phi, angles, points_i, points_j, layout=problem.layout, spec=problem.spec)
    return np.asarray(values).reshape(rows, columns.size)[: len(row_frames)]


def row_blocks(plan: MatrixPlan, rows: int) -> list[tuple[int, int]]:
    """``(b0, b1)``: the kept rows ``b0:b1`` of each block of at most ``rows`` rows."""
    return [(b0, min(b0 + rows, plan.side)) for b0 in range(0, plan.side, rows)]


def measured_rows(source, plan: MatrixPlan, angle: int, b0: int, b1: int) -> np.ndarray:
    """Kept rows ``b0:b1`` of one angle's ``c2_exp``, ``(b1 - b0, m)``, read from ``source``."""
    return source.full_rows(angle, int(plan.frames[b0]), int(plan.frames[b1 - 1]) + 1, plan.step)


def write_matrices(handle: h5py.File, result: NLSQResult, problem: NLSQProblem, source, plan: MatrixPlan, rows: int) -> None:
    """``c2_exp``, ``c2_fit``, ``residual`` of shape ``(n_angles, m, m)``, written ``rows`` kept rows at a time."""
    shape, chunks = (source.n_angles, plan.side, plan.side), (1, rows, plan.side)
    datasets = {name: handle.create_dataset(name, shape=shape, dtype=np.float64, chunks=chunks) for name in MATRICES}
    for angle in range(source.n_angles):
        for b0, b1 in row_blocks(plan, rows):
            measured = measured_rows(source, plan, angle, b0, b1)
            fitted = fitted_rows(result, problem, angle, plan.frames[b0:b1], plan.frames, rows)
            for name, block in zip(MATRICES, (measured, fitted, measured - fitted)):
                datasets[name][angle, b0:b1] = block


class AngleMatrices:
    """A read-only ``(n_angles, m, m)`` stand-in for ``c2_exp`` or ``c2_fit``: ``[k]`` builds ``angle_matrix(k)``."""

    def __init__(self, angle_matrix: Callable[[int], np.ndarray], n_angles: int, side: int) -> None:
        self._angle_matrix = angle_matrix
        self.shape = (n_angles, side, side)

    def __getitem__(self, k: int) -> np.ndarray:
        return self._angle_matrix(k)


def figure_arrays(result: NLSQResult, problem: NLSQProblem, source, plan: MatrixPlan, small: dict, rows: int) -> dict:
    """What the figures read: the small datasets, ``matrix_frames`` and, unless ``none``, per-angle matrices."""
    arrays = {**small, "matrix_frames": plan.frames}
    if plan.mode == "none":
        return arrays

    def fitted(k: int) -> np.ndarray:
        blocks = [fitted_rows(result, problem, k, plan.frames[b0:b1], plan.frames, rows) for b0, b1 in row_blocks(plan, rows)]
        return np.concatenate(blocks)

    arrays["c2_exp"] = AngleMatrices(lambda k: measured_rows(source, plan, k, 0, plan.side), source.n_angles, plan.side)
    arrays["c2_fit"] = AngleMatrices(fitted, source.n_angles, plan.side)
    return arrays


def write_fit_file(
    temp_path: Path,
    result: NLSQResult,
    problem: NLSQProblem,
    source,
    plan: MatrixPlan,
    figures=None,
    block_values: int = ROW_BLOCK_VALUES,
) -> None:
    """Writer thread: write ``nlsq/fit.h5`` at ``temp_path`` from ``source`` (``XPCSData`` or ``PointSource``);
    first ``figures(arrays)``, when given, queues the figures on :func:`figure_arrays`."""
    small = small_fit_arrays(result, problem, source)
    rows = block_rows(plan, block_values)
    if figures is not None:
        figures(figure_arrays(result, problem, source, plan, small, rows))
    with h5py.File(temp_path, "w") as handle:
        for name, array in small.items():
            handle.create_dataset(name, data=np.asarray(array))
        handle.create_dataset("matrix_frames", data=plan.frames)
        spec = problem.spec  # the model's mode, form, q (1/A) and dt (s), and the matrix plan
        handle.attrs.update(
            {"analysis_mode": spec.mode, "shear_form": spec.shear_form, "q": spec.q, "dt": spec.dt, **plan.attributes()}
        )
        if plan.mode != "none":
            write_matrices(handle, result, problem, source, plan, rows)


def write_streamed_fit_file(temp_path: Path, result: NLSQResult, problem: NLSQProblem, open_source, plan: MatrixPlan) -> None:
    """Writer thread: ``write_fit_file`` from a fresh ``PointSource`` (``open_source()``, closed here)."""
    with open_source() as source:
        write_fit_file(temp_path, result, problem, source, plan)
