"""Synthetic correlator files from the model, for tests, demos and benchmarks.

:func:`simulate_dataset` writes an APS-U or APS legacy HDF5 file that :func:`~homodyne_mpi.data.load_xpcs`
reads back, and the truth in ``<output>.truth.json``. Matrices are stored as the correlator stores them
(upper triangle with the diagonal, the rest 0): loaded, they are the model exactly for ``noise_sigma = 0``
in float64. One angle at a time, in row blocks of about 32 MiB (1e8 points take a few hundred MiB).

Noise, seeded by ``(seed, q index, angle index)``: Gaussian of ``noise_sigma`` on every stored entry;
``noise_model='speckle'`` adds per-frame terms (shared speckle pattern and intensity normalisation),
``c2[i, j] + frame_sigma (u_i + u_j) + noise_sigma e_ij`` with ``u_i, e_ij ~ N(0, 1)``: entries sharing
a frame are correlated (least squares then underestimates its errors, the frame-block jackknife does not).

Frames ``start_frame..n_frames`` hold exactly the model on the window's grid (``t_k = k*dt``, as in the
fit); earlier frames the model on the file's grid. JAX is imported only when a function here runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np

from homodyne_mpi.errors import InputError

from . import layouts

logger = logging.getLogger(__name__)

NOISE_MODELS = ("gaussian", "speckle")
DTYPES = ("float32", "float64")
COMPRESSIONS = ("auto", "lzf", "gzip", None)
DEFAULT_SIMULATED_PHI = tuple(float(a) for a in np.linspace(-90.0, 75.0, 6))
"""Angles (degrees) that ``simulate`` uses when none are given: -90, -57, ..., 75."""

_BLOCK_ENTRIES = 1 << 22
"""Entries per block of rows computed at once (32 MiB in float64)."""
_CHUNK_ENTRIES = 1 << 16
"""Entries per HDF5 chunk of whole rows (256 KiB float32, 512 KiB float64)."""


def truth_path(output: str | os.PathLike[str]) -> Path:
    """Where the truth of a simulated file goes: ``<output>.truth.json``."""
    output = Path(os.fspath(output))
    return output.with_name(output.name + ".truth.json")


@lru_cache(maxsize=1)
def _c2_rows_function():
    """The jitted block evaluator (built on first use, so JAX loads lazily)."""
    import jax

    from homodyne_mpi.model import g1_squared_from_integrals, interval

    def c2_rows(diffusion_rows, diffusion_cols, strain_rows, strain_cols, projection, contrast, offset, spec):
        diffusion_ij = interval(diffusion_cols[None, :], diffusion_rows[:, None], spec)
        strain_ij = interval(strain_cols[None, :], strain_rows[:, None], spec) if spec.has_shear else None
        return offset + contrast * g1_squared_from_integrals(diffusion_ij, strain_ij, projection, spec)

    return jax.jit(c2_rows, static_argnames=("spec",))


class _Integrals:
    """Running integrals of one grid (file or window) as NumPy arrays."""

    def __init__(self, physical, spec):
        from homodyne_mpi.model import transport_integrals

        diffusion, strain = transport_integrals(physical, spec)
        self.spec = spec
        self.diffusion = np.asarray(diffusion)
        self.strain = None if strain is None else np.asarray(strain)

    def rows(self, projection, contrast, offset, row_start, row_stop, col_start):
        """Model block for rows ``row_start:row_stop`` and columns ``col_start:`` of this grid."""
        rows, cols = slice(row_start, row_stop), slice(col_start, None)
        strain = (None, None) if self.strain is None else (self.strain[rows], self.strain[cols])
        block = _c2_rows_function()(self.diffusion[rows], self.diffusion[cols], *strain, projection, contrast, offset, self.spec)
        return np.asarray(block)


def per_angle_values(name: str, values, n_phi: int) -> np.ndarray:
    """``values`` as one float per angle: a single value is repeated ``n_phi`` times."""
    array = np.atleast_1d(np.asarray(values, dtype=np.float64)).reshape(-1)
    if array.size == 1:
        array = np.full(n_phi, array[0])
    if array.size != n_phi:
        raise InputError(
            f"simulate: {name} has {array.size} values for {n_phi} angles; give one value, "
            f"or one per angle (initial_parameters.per_angle_scaling.{name})"
        )
    if not np.all(np.isfinite(array)):
        raise InputError(f"simulate: {name} contains NaN or inf; give finite values")
    return array


def _check_arguments(
    mode, physical, phi, n_frames, start_frame, noise_sigma, layout, dtype, noise_model, decoy_q, compression, seed
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    from homodyne_mpi.model import PHYSICAL_PARAMETERS

    if mode not in PHYSICAL_PARAMETERS:
        raise InputError(f"simulate: analysis_mode {mode!r} is unknown; use one of {tuple(PHYSICAL_PARAMETERS)}")
    names = PHYSICAL_PARAMETERS[mode]
    physical = np.asarray(physical, dtype=np.float64).reshape(-1)
    if physical.size != len(names):
        raise InputError(f"simulate: {mode} needs {len(names)} physical parameters {names}, got {physical.size}")
    if not np.all(np.isfinite(physical)):
        raise InputError("simulate: physical parameters contain NaN or inf")
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    if phi.size == 0 or not np.all(np.isfinite(phi)):
        raise InputError("simulate: give at least one finite angle phi (degrees)")
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 2:
        raise InputError(f"simulate: n_frames is {n_frames!r}; use a whole number >= 2")
    if isinstance(start_frame, bool) or int(start_frame) != start_frame or not 1 <= start_frame < n_frames:
        raise InputError(
            f"simulate: start_frame is {start_frame!r}; use a whole number in 1..{int(n_frames) - 1} "
            "(the window needs at least 2 frames)"
        )
    if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise InputError(f"simulate: noise sigma is {noise_sigma!r}; use a number >= 0")
    if layout not in layouts.LAYOUTS:
        raise InputError(f"simulate: layout {layout!r} is unknown; use one of {layouts.LAYOUTS}")
    if dtype not in DTYPES:
        raise InputError(f"simulate: dtype {dtype!r} is unsupported; use one of {DTYPES}")
    if noise_model not in NOISE_MODELS:
        raise InputError(f"simulate: noise_model {noise_model!r} is unsupported; use one of {NOISE_MODELS}")
    for value in decoy_q:
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"simulate: decoy q {value!r} must be a positive number (1/Angstrom)")
    if compression not in COMPRESSIONS:
        raise InputError(f"simulate: compression {compression!r} is unsupported; use one of {COMPRESSIONS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"simulate: seed is {seed!r}; use a whole number >= 0")
    return names, physical, phi


def _frame_noise(noise_model: str, frame_sigma: float, n_frames: int, seed: int, q_index: int, angle_index: int):
    """Per-frame terms ``frame_sigma * u_i`` of the speckle noise model (None otherwise)."""
    if noise_model != "speckle" or frame_sigma <= 0:
        return None
    return frame_sigma * np.random.default_rng([int(seed), q_index, angle_index, 1]).standard_normal(n_frames)


def _write_matrix(
    dataset: h5py.Dataset,
    scaling: tuple[float | None, float, float],
    file_grid: _Integrals,
    window_grid: _Integrals | None,
    window_start: int,
    noise_sigma: float,
    rng: np.random.Generator,
    block_rows: int,
    frame_noise: np.ndarray | None,
) -> None:
    """Compute, perturb and store one angle's upper half (``scaling``: its shear projection,
    contrast, offset) in blocks of rows ``r0:r1`` over columns ``r0:``, the rest left at 0."""
    n = dataset.shape[0]
    for row_start in range(0, n, block_rows):
        row_stop = min(n, row_start + block_rows)
        rows = row_stop - row_start
        block = np.zeros((rows, n - row_start), dtype=np.float64)
        split = row_stop if window_grid is None else min(row_stop, max(row_start, window_start))
        if split > row_start:  # rows on the file's grid (all rows when there is no window)
            block[: split - row_start] = file_grid.rows(*scaling, row_start, split, row_start)
        if split < row_stop:  # rows inside the window, on the window's grid, columns >= split
            assert window_grid is not None, "split == row_stop without a window"
            local = split - window_start
            block[split - row_start :, split - row_start :] = window_grid.rows(*scaling, local, row_stop - window_start, local)
        if noise_sigma > 0:
            block += noise_sigma * rng.standard_normal(block.shape)
        if frame_noise is not None:
            block += frame_noise[row_start:row_stop, None] + frame_noise[None, row_start:]
        block[:, :rows] = np.triu(block[:, :rows])  # zero the strict lower triangle of the block
        dataset[row_start:row_stop, row_start:] = block.astype(dataset.dtype, copy=False)
        del block


def simulate_dataset(
    output: str | os.PathLike[str],
    *,
    mode: str,
    shear_form: str,
    q: float,
    dt: float,
    n_frames: int,
    gap: float,
    physical: Sequence[float] | np.ndarray,
    contrast,
    offset,
    phi: Sequence[float] | np.ndarray,
    noise_sigma: float = 0.0,
    seed: int = 0,
    layout: str = layouts.APS_U,
    dtype: str = "float64",
    noise_model: str = "gaussian",
    frame_noise_sigma: float | None = None,
    start_frame: int = 1,
    decoy_q: Sequence[float] = (),
    compression: str | None = "auto",
) -> dict:
    """Write a synthetic correlator file at ``output`` and its truth (returned), both atomically.

    Model: ``mode``, ``shear_form``, ``q`` (1/Angstrom), ``dt`` (s, stored as ``frame_time``), ``gap``
    (Angstrom), ``physical`` (canonical order), ``contrast``/``offset`` (one value or one per angle), ``phi``
    (degrees, stored as given); ``n_frames`` in the file, ``start_frame`` the model's time origin. Noise:
    ``noise_sigma`` (0 = exact), ``seed``, ``noise_model``, ``frame_noise_sigma`` (default ``noise_sigma``).
    ``compression`` ``auto`` is lzf for float32 (as the correlator), else none; ``decoy_q`` adds further q
    values to exercise q selection. Unusable arguments raise :class:`InputError`.
    """
    from homodyne_mpi.io.atomic import atomic_write_call, atomic_write_json
    from homodyne_mpi.model import ModelSpec, shear_projection

    decoy_q = tuple(float(v) for v in decoy_q)
    with contextlib.suppress(TypeError):  # reported by _check_arguments
        dtype = np.dtype(dtype).name
    names, physical, phi = _check_arguments(
        mode, physical, phi, n_frames, start_frame, float(noise_sigma), layout, dtype, noise_model, decoy_q, compression, seed
    )
    n_frames, start_frame, noise_sigma = int(n_frames), int(start_frame), float(noise_sigma)
    frame_sigma = noise_sigma if frame_noise_sigma is None else float(frame_noise_sigma)
    if noise_model == "speckle" and not (math.isfinite(frame_sigma) and frame_sigma >= 0):
        raise InputError(f"simulate: frame noise sigma is {frame_sigma!r}; use a number >= 0")
    n_phi = phi.size
    contrast = per_angle_values("contrast", contrast, n_phi)
    offset = per_angle_values("offset", offset, n_phi)
    try:
        q, dt, gap = float(q), float(dt), float(gap)
        spec_main = ModelSpec(mode=mode, shear_form=shear_form, q=q, dt=dt, n_frames=n_frames, gap=gap)
    except (TypeError, ValueError) as exc:
        raise InputError(f"simulate: {exc}") from None
    if q in decoy_q:
        raise InputError(f"simulate: decoy q {q} equals the data set's q; use a different value")
    q_values = sorted((q, *decoy_q))
    if compression == "auto":
        compression = "lzf" if dtype == "float32" else None

    truth = {
        "analysis_mode": mode,
        "shear_form": shear_form,
        "parameters": {name: float(value) for name, value in zip(names, physical)},
        "contrast": contrast.tolist(),
        "offset": offset.tolist(),
        "phi": phi.tolist(),
        "q": q,
        "dt": dt,
        "n_frames": n_frames,
        "start_frame": start_frame,
        "end_frame": n_frames,
        "gap": gap,
        "noise_sigma": noise_sigma,
        "noise_model": noise_model,
        "frame_noise_sigma": frame_sigma if noise_model == "speckle" else 0.0,
        "seed": int(seed),
        "layout": layout,
        "dtype": dtype,
        "decoy_q": list(decoy_q),
    }

    chunk_rows = max(1, min(n_frames, _CHUNK_ENTRIES // n_frames))
    block_rows = chunk_rows * max(1, (_BLOCK_ENTRIES // n_frames) // chunk_rows)

    def write(temp: Path) -> None:
        with h5py.File(temp, "w") as h5:
            h5.attrs["homodyne_mpi_simulated"] = json.dumps(truth)
            n_bins = len(q_values) * n_phi
            if layout == layouts.APS_U:
                h5.create_dataset(layouts.APS_U_Q_KEY, data=np.asarray(q_values, dtype=np.float64))
                h5.create_dataset(layouts.APS_U_PHI_KEY, data=phi)
                h5.create_dataset(layouts.APS_U_BINS_KEY, data=np.arange(1, n_bins + 1, dtype=np.int64))
                keys = [layouts.aps_u_matrix_key(position) for position in range(n_bins)]
            else:
                h5.create_dataset(layouts.LEGACY_Q_KEY, data=np.repeat(np.asarray(q_values), n_phi)[None, :])
                h5.create_dataset(layouts.LEGACY_PHI_KEY, data=np.tile(phi, len(q_values))[None, :])
                keys = [f"{layouts.LEGACY_MATRIX_GROUP}/c2_{position + 1:05d}" for position in range(n_bins)]
            h5.create_dataset(layouts.FRAME_TIME_KEY, data=dt)
            h5.create_dataset(layouts.STRIDE_FRAME_KEY, data=1)
            h5.create_dataset(layouts.AVG_FRAME_KEY, data=1)

            chunks = (chunk_rows, n_frames) if compression else None
            for q_index, q_value in enumerate(q_values):
                spec_file = dataclasses.replace(spec_main, q=q_value)
                file_grid = _Integrals(physical, spec_file)
                window_spec = dataclasses.replace(spec_file, n_frames=n_frames - start_frame + 1)
                window_grid = _Integrals(physical, window_spec) if start_frame > 1 else None
                projections = np.asarray(shear_projection(physical, phi)) if spec_file.has_shear else None
                for angle_index in range(n_phi):
                    started = time.perf_counter()
                    key = keys[q_index * n_phi + angle_index]
                    dataset = h5.create_dataset(
                        key, shape=(n_frames, n_frames), dtype=dtype, chunks=chunks, compression=compression
                    )
                    projection = None if projections is None else float(projections[angle_index])
                    scaling = (projection, float(contrast[angle_index]), float(offset[angle_index]))
                    rng = np.random.default_rng([int(seed), q_index, angle_index])
                    frame_noise = _frame_noise(noise_model, frame_sigma, n_frames, seed, q_index, angle_index)
                    _write_matrix(
                        dataset, scaling, file_grid, window_grid, start_frame - 1, noise_sigma, rng, block_rows, frame_noise
                    )
                    elapsed = time.perf_counter() - started
                    logger.debug("simulated %s (q = %g, phi = %g) in %.2f s", key, q_value, phi[angle_index], elapsed)

    started = time.perf_counter()
    try:
        target = atomic_write_call(output, write)
        atomic_write_json(truth_path(target), truth)
    except OSError as exc:
        raise InputError(f"{output}: cannot write the simulated file ({exc}); choose a writable --output path") from exc
    decoys = f" (+{len(decoy_q)} decoy q)" if decoy_q else ""
    written = (target, layout, dtype, n_phi, n_frames, decoys, time.perf_counter() - started, truth_path(target))
    logger.info("simulated %s: %s layout, %s, %d angles x %d frames%s in %.1f s; truth in %s", *written)
    return truth
