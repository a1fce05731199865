"""A second route to ``c2``, written from the model's equations only: pure NumPy, no program code.

Nothing here imports :mod:`homodyne_mpi`. The tests use it to check the program's physics
from outside: simulated data made here is written in the APS-U layout, fitted by the
program, and the truth must come back (``tests/test_physics_independent.py``).

The equations (He et al., PNAS 121(31) e2401162121 (2024); conventions as stated in
``docs/architecture.md``, section "The model"):

- rates ``D(t) = D0 t^alpha + D_offset`` (Angstrom^2/s) and
  ``gamma_dot(t) = gamma_dot_t0 t^beta + gamma_dot_t_offset`` (1/s), floored at 1e-10;
- ``g1 = exp(-q^2/2 * int_{t_i}^{t_j} D dt) * S(Phi)`` with
  ``Phi = q h cos(phi0 - phi) * int_{t_i}^{t_j} gamma_dot dt`` (angles in degrees);
  ``S = sinc(Phi/2)`` (``paper``) or ``sinc(Phi/(2 pi))^2`` (``homodyne-v2``), ``sinc``
  unnormalised;
- ``c2 = offset_phi + contrast_phi * g1^2``.

How the integrals are taken differs from the program on purpose. The program sums a
trapezoid over frame samples (a cumulative sum of ``(r_k + r_{k+1}) dt/2``). Here each
integral is a Gauss-Legendre quadrature (3 nodes) on ``SUBSTEPS`` sub-intervals of every
frame interval, of a rate function evaluated at the nodes:

- ``convention="frames"`` (the program's discretisation, what a fit must recover): the
  rate is the straight line between its values at the frame times ``t_k = k dt`` of the
  fitted window, with the value at ``t_0 = 0`` taken at ``t = dt/2`` (so that
  ``0**negative`` never occurs). A trapezoid sum integrates exactly that line, so both
  routes agree to rounding when the physics is implemented as stated, and disagree when
  it is not.
- ``convention="continuous"``: the rate function itself at the nodes (the exact integral
  of the continuous ``D(t)``, for exponents >= 0), to compare the discretisation with the
  true integral.
"""

from __future__ import annotations

import h5py
import numpy as np

RATE_FLOOR = 1e-10
"""Lower bound of both rates, in their units."""
SUBSTEPS = 4
"""Quadrature sub-intervals per frame interval."""
SMOOTH_ABS_EPSILON = 1e-12
"""``homodyne-v2`` takes an interval as ``dt * sqrt(d**2 + 1e-12)``, ``d`` in frame units."""


def power_law(t: np.ndarray, prefactor: float, exponent: float, offset: float) -> np.ndarray:
    """``max(prefactor * t**exponent + offset, 1e-10)`` at times ``t > 0`` (s)."""
    return np.maximum(prefactor * np.power(t, exponent) + offset, RATE_FLOOR)


def running_integral(
    n_frames: int, dt: float, prefactor: float, exponent: float, offset: float, convention: str = "frames"
) -> np.ndarray:
    """``int_0^{t_k} r(t) dt`` at the frame times ``t_k = k dt``, ``k = 0..n_frames-1``.

    Gauss-Legendre quadrature with 3 nodes on ``SUBSTEPS`` equal pieces of each frame
    interval; ``r`` as described in the module docstring for ``convention``.
    """
    nodes, weights = np.polynomial.legendre.leggauss(3)
    piece = dt / SUBSTEPS
    starts = np.arange((n_frames - 1) * SUBSTEPS) * piece
    times = starts[:, None] + 0.5 * piece * (nodes[None, :] + 1.0)
    if convention == "frames":
        frame_times = np.arange(n_frames) * dt
        sample_times = frame_times.copy()
        sample_times[0] = 0.5 * dt
        samples = power_law(sample_times, prefactor, exponent, offset)
        rate = np.interp(times, frame_times, samples)
    elif convention == "continuous":
        rate = power_law(times, prefactor, exponent, offset)
    else:
        raise ValueError(f"unknown convention {convention!r}")
    piece_integrals = 0.5 * piece * (rate @ weights)
    per_frame = piece_integrals.reshape(n_frames - 1, SUBSTEPS).sum(axis=1)
    return np.concatenate([[0.0], np.cumsum(per_frame)])


def between_frames(running: np.ndarray, dt: float, shear_form: str) -> np.ndarray:
    """``(N, N)`` integral between every two frames: ``|R_j - R_i|`` (``homodyne-v2``: smoothed)."""
    difference = running[None, :] - running[:, None]
    if shear_form == "homodyne-v2":
        return dt * np.sqrt((difference / dt) ** 2 + SMOOTH_ABS_EPSILON)
    return np.abs(difference)


def unnormalised_sinc(x: np.ndarray) -> np.ndarray:
    """``sin(x)/x`` (1 at 0), from NumPy's normalised ``sinc(y) = sin(pi y)/(pi y)``."""
    return np.sinc(np.asarray(x) / np.pi)


def c2_matrices(
    *,
    mode: str,
    shear_form: str,
    q: float,
    dt: float,
    n_frames: int,
    gap: float,
    physical,
    contrast,
    offset,
    phi_deg,
    convention: str = "frames",
) -> np.ndarray:
    """``c2``, shape ``(n_angles, n_frames, n_frames)``, from the equations in the module docstring.

    ``physical``: ``[D0, alpha, D_offset]`` (static) or those plus
    ``[gamma_dot_t0, beta, gamma_dot_t_offset, phi0]`` (laminar flow, ``phi0`` in degrees).
    ``contrast``/``offset``: one value per angle; ``q`` 1/Angstrom, ``dt`` s, ``gap`` Angstrom.
    """
    phi_deg = np.asarray(phi_deg, dtype=float)
    contrast = np.broadcast_to(np.asarray(contrast, dtype=float), phi_deg.shape)
    offset = np.broadcast_to(np.asarray(offset, dtype=float), phi_deg.shape)
    d0, alpha, d_offset = physical[:3]
    diffusion = between_frames(running_integral(n_frames, dt, d0, alpha, d_offset, convention), dt, shear_form)
    g1_squared = np.exp(-(q**2) * diffusion)[None]  # (exp(-q^2/2 * integral))^2
    if mode == "laminar_flow":
        shear0, beta, shear_offset, phi0 = physical[3:7]
        strain = between_frames(running_integral(n_frames, dt, shear0, beta, shear_offset, convention), dt, shear_form)
        projection = np.cos(np.radians(phi0 - phi_deg))[:, None, None]
        phase = q * gap * projection * strain[None]
        if shear_form == "paper":
            factor = unnormalised_sinc(phase / 2.0)
        else:
            factor = unnormalised_sinc(phase / (2.0 * np.pi)) ** 2
        g1_squared = g1_squared * factor**2
    elif mode != "static":
        raise ValueError(f"unknown mode {mode!r}")
    return offset[:, None, None] + contrast[:, None, None] * g1_squared


def write_aps_u(path, *, q: float, phi_deg, c2: np.ndarray, dt: float, noise_sigma: float = 0.0, seed: int = 0) -> None:
    """Write ``c2`` as an APS-U correlator file at ``path``, as the correlator stores it.

    Keys written literally from the layout's definition (``docs/architecture.md``, "Data
    in"): q and phi lists under ``xpcs/qmap``, 1-based ``processed_bins``, one upper
    triangle (diagonal included, lower triangle 0) per bin under
    ``xpcs/twotime/correlation_map/c2_00001...``, and the frame period. Seeded Gaussian
    noise of ``noise_sigma`` is added to every stored entry.
    """
    rng = np.random.default_rng(seed)
    phi_deg = np.asarray(phi_deg, dtype=float)
    with h5py.File(path, "w") as h5:
        h5["xpcs/qmap/dynamic_v_list_dim0"] = np.array([q])
        h5["xpcs/qmap/dynamic_v_list_dim1"] = phi_deg
        h5["xpcs/twotime/processed_bins"] = np.arange(1, phi_deg.size + 1)
        h5["entry/instrument/detector_1/frame_time"] = dt
        for k, matrix in enumerate(c2):
            noisy = matrix + noise_sigma * rng.standard_normal(matrix.shape)
            h5[f"xpcs/twotime/correlation_map/c2_{k + 1:05d}"] = np.triu(noisy)
