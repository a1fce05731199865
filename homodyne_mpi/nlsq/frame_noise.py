"""Generalised least squares for per-frame ("speckle") noise (NumPy, pure).

Noise model. The point ``(i, j)``, ``i < j``, of angle ``a`` of the two-time matrix carries
``s_a e_ij + u_ai + u_aj``: independent point noise of variance ``s_a^2`` and one term per
frame of variance ``fs^2`` (shared speckle pattern, intensity normalisation), independent
across frames and angles (``homodyne-mpi simulate --noise-model speckle``). With ``A_a``
the ``points x frames`` incidence matrix of angle ``a`` (a one in columns ``i`` and ``j``
of each point's row) the covariance of that angle's points is

    Sigma_a = s_a^2 (I + gamma A_a A_a^T),    gamma = fs^2 / s_a^2  (dimensionless),

``gamma`` shared across angles; angles are independent. Every point of an angle is
correlated with the ``2 (N - 2)`` others sharing a frame, so ordinary least squares (OLS)
weights them wrongly and its model std is far too small (``docs/uncertainty.md``).

Woodbury identities. With ``G_a = A_a^T A_a`` (frames x frames, the counts of points per
frame and per pair of frames) and the capacitance ``M_a = I / gamma + G_a``:

    Sigma_a^-1 = s_a^-2 [I - A_a M_a^-1 A_a^T]
    log det(I + gamma A_a A_a^T) = log det(I + gamma G_a) = sum_k log(1 + gamma lam_k)

(``lam_k`` the eigenvalues of ``G_a``; ``M_a^-1 = V diag(gamma / (1 + gamma lam)) V^T``).
So the GLS normal equations ``H = J^T Sigma^-1 J``, ``g = J^T Sigma^-1 r`` and the cost
``r^T Sigma^-1 r`` need per angle only the OLS sums ``J^T J``, ``J^T r``, ``r^T r`` and the
per-frame sums ``A^T J``, ``A^T r`` (``frame_sums``), all additive over points (so over
chunks and ranks), and the frame pattern ``G_a`` (``frame_gram``, ``frame_patterns``):
``n_frames x n_frames`` per angle, never ``points x points``. When an angle's points are
every pair of the ``m`` frames they use (the full triangle), ``G = (m - 2) I + 1 1^T`` on
those frames and ``M^-1`` has the closed form ``d1 (I - 1 1^T / m) + d2 1 1^T / m`` with
``d1 = gamma / (1 + gamma (m - 2))``, ``d2 = gamma / (1 + gamma (2 m - 2))``: no
eigen-decomposition (``AngleFramePattern.complete_frames``). Other patterns (frames
missing, points dropped) use the eigen-decomposition of ``G_a``.

``gamma`` is estimated by maximum likelihood with each ``s_a^2`` profiled out
(``estimate_frame_noise_ratio``); ``gamma = 0`` gives OLS with weights ``1 / s_a`` exactly.

The distributed fit uses these functions through ``nlsq/gls.py`` (``optimization.nlsq.
noise_model: frame_shared``); ``scripts/study_gls_speckle.py`` uses them in a serial
Levenberg-Marquardt fit and measures the calibration of its errors
(``docs/measurements/gls_speckle.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAMMA_GRID = np.concatenate([[0.0], np.logspace(-5.0, 4.0, 91)])
"""Default grid of ``gamma`` searched before refining the maximum likelihood estimate."""


@dataclass(frozen=True)
class FrameSums:
    """Per-angle sums over the points, at one parameter vector ``theta``.

    ``r = y - f(theta)`` are the unweighted residuals (c2 units) and ``J = df/dtheta`` the
    Jacobian of the model (c2 units per parameter unit); ``A`` is the angle's incidence matrix.
    Every field is a sum over points, so chunks of points (or ranks) add.
    """

    jtj: np.ndarray
    """``(n_angles, p, p)`` ``J_a^T J_a``."""
    jtr: np.ndarray
    """``(n_angles, p)`` ``J_a^T r_a``."""
    rtr: np.ndarray
    """``(n_angles,)`` ``r_a^T r_a``, c2 units squared."""
    frame_jacobian: np.ndarray
    """``(n_angles, n_frames, p)`` ``A_a^T J_a``: per frame, the sum of the Jacobian rows of its points."""
    frame_residual: np.ndarray
    """``(n_angles, n_frames)`` ``A_a^T r_a``: per frame, the sum of the residuals of its points."""
    n_points: np.ndarray
    """``(n_angles,)`` number of points of each angle."""


@dataclass(frozen=True)
class AngleFramePattern:
    """Spectrum of one angle's frame pattern ``G = A^T A`` (counts, dimensionless)."""

    eigenvalues: np.ndarray
    """``(n_frames,)`` eigenvalues of ``G`` (``>= 0``), in the order of ``eigenvectors``' columns."""
    eigenvectors: np.ndarray | None
    """``(n_frames, n_frames)`` orthonormal eigenvectors; ``None`` on the full-triangle fast path."""
    complete_frames: int
    """``m`` when the points are every pair of the ``m`` frames they use (closed form), else 0."""


def _as_points(angle, frame_i, frame_j, n_angles: int, n_frames: int):
    """Validated int64 index arrays of the points."""
    angle, frame_i, frame_j = (np.asarray(x, dtype=np.int64).ravel() for x in (angle, frame_i, frame_j))
    if not angle.size == frame_i.size == frame_j.size:
        raise ValueError("angle, frame_i and frame_j must have the same length")
    if angle.size and (angle.min() < 0 or angle.max() >= n_angles):
        raise ValueError(f"angle indices must lie in [0, {n_angles})")
    for name, frames in (("frame_i", frame_i), ("frame_j", frame_j)):
        if frames.size and (frames.min() < 0 or frames.max() >= n_frames):
            raise ValueError(f"{name} must lie in [0, {n_frames})")
    return angle, frame_i, frame_j


def frame_gram(angle, frame_i, frame_j, *, n_angles: int, n_frames: int) -> np.ndarray:
    """``(n_angles, n_frames, n_frames)`` frame patterns ``G_a = A_a^T A_a`` of the points
    ``(angle, frame_i, frame_j)`` (0-based): ``G[a, k, k]`` counts the points of angle ``a``
    touching frame ``k``, ``G[a, k, l]`` (``k != l``) the points ``(k, l)`` or ``(l, k)``."""
    angle, frame_i, frame_j = _as_points(angle, frame_i, frame_j, n_angles, n_frames)
    gram = np.zeros((n_angles, n_frames, n_frames))
    for first, second in ((frame_i, frame_i), (frame_j, frame_j), (frame_i, frame_j), (frame_j, frame_i)):
        np.add.at(gram, (angle, first, second), 1.0)
    return gram


def _complete_frames(gram: np.ndarray) -> int:
    """``m`` when ``gram`` is ``(m - 2) I + 1 1^T`` on the ``m >= 2`` frames it uses and zero elsewhere, else 0."""
    used = np.flatnonzero(np.diag(gram) > 0)
    m = used.size
    if m < 2:
        return 0
    expected = np.zeros_like(gram)
    expected[np.ix_(used, used)] = 1.0
    expected[used, used] = m - 1.0
    return m if np.array_equal(gram, expected) else 0


def full_triangle_pattern(n_frames: int, m: int) -> AngleFramePattern:
    """The spectrum of ``G = (m - 2) I + 1 1^T`` on ``m >= 2`` of ``n_frames`` frames (every pair of
    them a point): ``m - 1`` eigenvalues ``m - 2``, one ``2 m - 2``, the rest 0 (closed form)."""
    eigenvalues = np.zeros(n_frames)
    eigenvalues[: m - 1] = m - 2.0
    eigenvalues[m - 1] = 2.0 * m - 2.0
    return AngleFramePattern(eigenvalues, None, m)


def frame_patterns(gram: np.ndarray, *, closed_form: bool = True) -> list[AngleFramePattern]:
    """Per angle, the spectrum of ``G_a`` (``frame_gram``): the closed form of the full triangle
    when it applies and ``closed_form`` is set, else ``numpy.linalg.eigh`` (``O(n_frames^3)``).
    Depends only on which points exist, so it is computed once per fit."""
    patterns = []
    for angle_gram in np.asarray(gram, dtype=float):
        n_frames = angle_gram.shape[0]
        m = _complete_frames(angle_gram) if closed_form else 0
        if m:
            patterns.append(full_triangle_pattern(n_frames, m))
        else:
            eigenvalues, eigenvectors = np.linalg.eigh(angle_gram)
            patterns.append(AngleFramePattern(np.clip(eigenvalues, 0.0, None), eigenvectors, 0))
    return patterns


def frame_sums(angle, frame_i, frame_j, residual, jacobian=None, *, n_angles: int, n_frames: int) -> FrameSums:
    """The per-angle sums (``FrameSums``) of the points ``(angle, frame_i, frame_j)`` with
    residuals ``residual`` (``(n,)``, c2 units) and Jacobian ``jacobian`` (``(n, p)``; ``None``
    for ``p = 0``, enough to estimate ``gamma``)."""
    angle, frame_i, frame_j = _as_points(angle, frame_i, frame_j, n_angles, n_frames)
    residual = np.asarray(residual, dtype=float).ravel()
    jacobian = np.zeros((residual.size, 0)) if jacobian is None else np.asarray(jacobian, dtype=float)
    if residual.size != angle.size or jacobian.ndim != 2 or jacobian.shape[0] != angle.size:
        raise ValueError("residual must be (n,) and jacobian (n, p) for the n points")
    n_params = jacobian.shape[1]
    slots = n_angles * n_frames
    slot_i, slot_j = angle * n_frames + frame_i, angle * n_frames + frame_j

    def per_frame(values: np.ndarray) -> np.ndarray:
        return np.bincount(slot_i, values, slots) + np.bincount(slot_j, values, slots)

    frame_jacobian = np.zeros((slots, n_params))
    for column in range(n_params):
        frame_jacobian[:, column] = per_frame(jacobian[:, column])
    jtj = np.zeros((n_angles, n_params, n_params))
    jtr = np.zeros((n_angles, n_params))
    for a in range(n_angles):
        rows = np.flatnonzero(angle == a)
        jtj[a] = jacobian[rows].T @ jacobian[rows]
        jtr[a] = jacobian[rows].T @ residual[rows]
    return FrameSums(
        jtj=jtj,
        jtr=jtr,
        rtr=np.bincount(angle, residual * residual, n_angles),
        frame_jacobian=frame_jacobian.reshape(n_angles, n_frames, n_params),
        frame_residual=per_frame(residual).reshape(n_angles, n_frames),
        n_points=np.bincount(angle, minlength=n_angles),
    )


def capacitance_product(pattern: AngleFramePattern, gamma: float, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left^T (I / gamma + G)^-1 right`` for per-frame sums ``left`` ``(n_frames, k)`` and
    ``right`` ``(n_frames, l)`` of one angle (rows of frames without points are zero); 0 at ``gamma = 0``."""
    left, right = np.atleast_2d(left.T).T, np.atleast_2d(right.T).T
    if gamma == 0.0:
        return np.zeros((left.shape[1], right.shape[1]))
    if pattern.eigenvectors is None:
        m = pattern.complete_frames
        d1 = gamma / (1.0 + gamma * (m - 2.0))
        d2 = gamma / (1.0 + gamma * (2.0 * m - 2.0))
        return d1 * (left.T @ right) + (d2 - d1) * np.outer(left.sum(axis=0), right.sum(axis=0)) / m
    weights = gamma / (1.0 + gamma * pattern.eigenvalues)
    return (pattern.eigenvectors.T @ left).T @ (weights[:, None] * (pattern.eigenvectors.T @ right))


def whitened_quadratic(sums: FrameSums, patterns: list[AngleFramePattern], gamma: float) -> np.ndarray:
    """``(n_angles,)`` ``Q_a = r_a^T (I + gamma A_a A_a^T)^-1 r_a`` = ``s_a^2 r_a^T Sigma_a^-1 r_a``, c2 units squared."""
    return np.array(
        [
            sums.rtr[a] - capacitance_product(pattern, gamma, sums.frame_residual[a], sums.frame_residual[a])[0, 0]
            for a, pattern in enumerate(patterns)
        ]
    )


def frame_noise_logdet(patterns: list[AngleFramePattern], gamma: float) -> np.ndarray:
    """``(n_angles,)`` ``log det(I + gamma A_a A_a^T) = sum_k log(1 + gamma lam_k)`` (dimensionless)."""
    return np.array([np.sum(np.log1p(gamma * pattern.eigenvalues)) for pattern in patterns])


def gls_normal_equations(
    sums: FrameSums, patterns: list[AngleFramePattern], gamma: float, noise_variance
) -> tuple[np.ndarray, np.ndarray, float]:
    """GLS normal equations ``(H, g, cost)``: ``H = J^T Sigma^-1 J`` (``(p, p)``, per parameter
    unit squared), ``g = J^T Sigma^-1 r`` (``(p,)``; the Gauss-Newton step is ``H^-1 g`` for
    ``r = y - f``) and ``cost = r^T Sigma^-1 r`` (dimensionless), summed over the angles with
    ``Sigma_a = s_a^2 (I + gamma A_a A_a^T)`` and ``noise_variance`` ``s_a^2`` (scalar or
    ``(n_angles,)``, c2 units squared). Angles without points contribute nothing.
    ``gamma = 0`` is OLS with weights ``1 / s_a``."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    n_angles, _, n_params = sums.frame_jacobian.shape
    variance = np.broadcast_to(np.asarray(noise_variance, dtype=float), (n_angles,))
    hessian, gradient, cost = np.zeros((n_params, n_params)), np.zeros(n_params), 0.0
    for a, pattern in enumerate(patterns):
        if sums.n_points[a] == 0:
            continue
        frame_jac, frame_res = sums.frame_jacobian[a], sums.frame_residual[a][:, None]
        hessian += (sums.jtj[a] - capacitance_product(pattern, gamma, frame_jac, frame_jac)) / variance[a]
        gradient += (sums.jtr[a] - capacitance_product(pattern, gamma, frame_jac, frame_res)[:, 0]) / variance[a]
        cost += (sums.rtr[a] - capacitance_product(pattern, gamma, frame_res, frame_res)[0, 0]) / variance[a]
    return hessian, gradient, float(cost)


def profile_loglikelihood(sums: FrameSums, patterns: list[AngleFramePattern], gamma: float) -> tuple[float, np.ndarray]:
    """Gaussian log-likelihood of the residuals (without ``-n log(2 pi) / 2``) at ``gamma`` with
    each ``s_a^2`` at its maximum ``Q_a / n_a`` (``whitened_quadratic``):
    ``-1/2 sum_a [n_a log s_a^2 + log det(I + gamma A_a A_a^T) + n_a]``, and those ``s_a^2``
    (``(n_angles,)``, c2 units squared; NaN for angles without points, which add nothing)."""
    n_points = sums.n_points.astype(float)
    used = n_points > 0
    quadratic = whitened_quadratic(sums, patterns, gamma)
    variance = np.full(n_points.size, np.nan)
    variance[used] = quadratic[used] / n_points[used]
    logdet = frame_noise_logdet(patterns, gamma)
    value = -0.5 * np.sum(n_points[used] * np.log(variance[used]) + logdet[used] + n_points[used])
    return float(value), variance


def _golden_maximum(function, low: float, high: float, tolerance: float) -> float:
    """Argument of the maximum of a unimodal ``function`` on ``[low, high]`` (golden section)."""
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = function(c), function(d)
    while b - a > tolerance:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = function(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = function(d)
    return (a + b) / 2.0


def estimate_frame_noise_ratio(
    sums: FrameSums,
    patterns: list[AngleFramePattern],
    *,
    grid: np.ndarray = GAMMA_GRID,
    log_tolerance: float = 1e-7,
) -> tuple[float, np.ndarray]:
    """Maximum likelihood ``gamma = fs^2 / s^2 >= 0`` (dimensionless) at the residuals of
    ``sums``, with each ``s_a^2`` profiled out (``profile_loglikelihood``), and those ``s_a^2``
    (``(n_angles,)``, c2 units squared). The best point of the increasing ``grid`` (first value
    0) is refined by golden section in ``log gamma`` between its neighbours to ``log_tolerance``."""
    grid = np.asarray(grid, dtype=float)
    values = [profile_loglikelihood(sums, patterns, float(gamma))[0] for gamma in grid]
    best = int(np.argmax(values))
    gamma = float(grid[best])
    if gamma > 0:
        low = np.log(grid[max(best - 1, 1)])
        high = np.log(grid[min(best + 1, grid.size - 1)])

        def loglikelihood(log_gamma: float) -> float:
            return profile_loglikelihood(sums, patterns, float(np.exp(log_gamma)))[0]

        refined = float(np.exp(_golden_maximum(loglikelihood, low, high, log_tolerance)))
        if profile_loglikelihood(sums, patterns, refined)[0] >= values[best]:
            gamma = refined
    return gamma, profile_loglikelihood(sums, patterns, gamma)[1]
