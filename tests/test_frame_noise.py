"""The speckle-noise GLS pieces (``nlsq.frame_noise``) against a dense covariance built
explicitly, ``Sigma_a = s_a^2 (I + gamma A_a A_a^T)`` with the incidence matrix ``A_a``
written out point by point, and the ``gamma`` estimator on simulated pure noise."""

import numpy as np
import pytest

from homodyne_mpi.nlsq.frame_noise import (
    estimate_frame_noise_ratio,
    frame_gram,
    frame_noise_logdet,
    frame_patterns,
    frame_sums,
    gls_normal_equations,
    profile_loglikelihood,
)

N_PARAMS = 4


def point_set(n_angles: int, n_frames: int, pattern: str, rng):
    """``(angle, frame_i, frame_j)`` of the strict upper triangles: ``full``; ``dropped`` (15% of
    the points removed at random); ``missing_frame`` (every point of frame 2 removed, then 10%)."""
    rows, cols = np.triu_indices(n_frames, 1)
    angle = np.repeat(np.arange(n_angles), rows.size)
    frame_i, frame_j = np.tile(rows, n_angles), np.tile(cols, n_angles)
    keep = np.ones(angle.size, dtype=bool)
    if pattern == "dropped":
        keep = rng.random(angle.size) > 0.15
    elif pattern == "missing_frame":
        keep = (frame_i != 2) & (frame_j != 2) & (rng.random(angle.size) > 0.1)
    order = rng.permutation(np.flatnonzero(keep))  # points need not be grouped by angle
    return angle[order], frame_i[order], frame_j[order]


def dense_covariances(angle, frame_i, frame_j, n_angles, n_frames, gamma, noise_variance):
    """Per angle: the point indices and ``Sigma_a`` built from the explicit incidence matrix."""
    out = []
    for a in range(n_angles):
        index = np.flatnonzero(angle == a)
        incidence = np.zeros((index.size, n_frames))
        for row, point in enumerate(index):
            incidence[row, frame_i[point]] += 1.0
            incidence[row, frame_j[point]] += 1.0
        identity = np.eye(index.size)
        out.append((index, noise_variance[a] * (identity + gamma * incidence @ incidence.T), incidence))
    return out


def case(pattern: str, seed: int = 3, n_angles: int = 3, n_frames: int = 8):
    rng = np.random.default_rng(seed)
    angle, frame_i, frame_j = point_set(n_angles, n_frames, pattern, rng)
    jacobian = rng.standard_normal((angle.size, N_PARAMS))
    residual = rng.standard_normal(angle.size)
    noise_variance = np.array([0.7, 1.9, 0.4])[:n_angles]
    return angle, frame_i, frame_j, jacobian, residual, noise_variance, n_angles, n_frames


@pytest.mark.parametrize("pattern", ["full", "dropped", "missing_frame"])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 5.0])
def test_normal_equations_and_logdet_match_dense_covariance(pattern, gamma):
    angle, frame_i, frame_j, jacobian, residual, noise_variance, n_angles, n_frames = case(pattern)
    sums = frame_sums(angle, frame_i, frame_j, residual, jacobian, n_angles=n_angles, n_frames=n_frames)
    patterns = frame_patterns(frame_gram(angle, frame_i, frame_j, n_angles=n_angles, n_frames=n_frames))
    hessian, gradient, cost = gls_normal_equations(sums, patterns, gamma, noise_variance)
    logdet = frame_noise_logdet(patterns, gamma)

    dense_h, dense_g, dense_cost = np.zeros((N_PARAMS, N_PARAMS)), np.zeros(N_PARAMS), 0.0
    for a, (index, sigma, _) in enumerate(dense_covariances(angle, frame_i, frame_j, n_angles, n_frames, gamma, noise_variance)):
        inverse = np.linalg.inv(sigma)
        dense_h += jacobian[index].T @ inverse @ jacobian[index]
        dense_g += jacobian[index].T @ inverse @ residual[index]
        dense_cost += residual[index] @ inverse @ residual[index]
        assert logdet[a] == pytest.approx(np.linalg.slogdet(sigma / noise_variance[a])[1], rel=1e-11, abs=1e-11)
    np.testing.assert_allclose(hessian, dense_h, rtol=1e-10, atol=1e-12 * np.abs(dense_h).max())
    np.testing.assert_allclose(gradient, dense_g, rtol=1e-10, atol=1e-12 * np.abs(dense_g).max())
    assert cost == pytest.approx(dense_cost, rel=1e-11)


def test_full_triangle_takes_the_closed_form_and_it_matches_the_eigen_decomposition():
    angle, frame_i, frame_j, jacobian, residual, noise_variance, n_angles, n_frames = case("full", n_frames=10)
    gram = frame_gram(angle, frame_i, frame_j, n_angles=n_angles, n_frames=n_frames)
    closed = frame_patterns(gram)
    eigen = frame_patterns(gram, closed_form=False)
    assert [p.complete_frames for p in closed] == [n_frames] * n_angles
    assert all(p.eigenvectors is None for p in closed) and all(p.eigenvectors is not None for p in eigen)
    sums = frame_sums(angle, frame_i, frame_j, residual, jacobian, n_angles=n_angles, n_frames=n_frames)
    for gamma in (0.3, 5.0):
        for fast, slow in zip(
            gls_normal_equations(sums, closed, gamma, noise_variance), gls_normal_equations(sums, eigen, gamma, noise_variance)
        ):
            np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=1e-12 * np.abs(slow).max())
        np.testing.assert_allclose(frame_noise_logdet(closed, gamma), frame_noise_logdet(eigen, gamma), rtol=1e-12)
    # one point fewer and the pattern is no longer complete
    dropped = frame_gram(angle[1:], frame_i[1:], frame_j[1:], n_angles=n_angles, n_frames=n_frames)
    assert sum(p.complete_frames == 0 for p in frame_patterns(dropped)) == 1


def test_gamma_zero_is_ordinary_least_squares():
    angle, frame_i, frame_j, jacobian, residual, noise_variance, n_angles, n_frames = case("dropped")
    sums = frame_sums(angle, frame_i, frame_j, residual, jacobian, n_angles=n_angles, n_frames=n_frames)
    patterns = frame_patterns(frame_gram(angle, frame_i, frame_j, n_angles=n_angles, n_frames=n_frames))
    hessian, gradient, cost = gls_normal_equations(sums, patterns, 0.0, noise_variance)
    weights = 1.0 / noise_variance[angle]
    np.testing.assert_allclose(hessian, jacobian.T @ (weights[:, None] * jacobian), rtol=1e-13)
    np.testing.assert_allclose(gradient, jacobian.T @ (weights * residual), rtol=1e-13)
    assert cost == pytest.approx(float(np.sum(weights * residual**2)), rel=1e-13)
    assert frame_noise_logdet(patterns, 0.0).tolist() == [0.0] * n_angles


@pytest.mark.parametrize("gamma", [0.0, 0.3, 5.0])
def test_profile_loglikelihood_matches_dense_gaussian(gamma):
    angle, frame_i, frame_j, _, residual, _, n_angles, n_frames = case("missing_frame")
    sums = frame_sums(angle, frame_i, frame_j, residual, n_angles=n_angles, n_frames=n_frames)
    patterns = frame_patterns(frame_gram(angle, frame_i, frame_j, n_angles=n_angles, n_frames=n_frames))
    value, variance = profile_loglikelihood(sums, patterns, gamma)
    unit = np.ones(n_angles)
    dense_value, dense_variance = 0.0, []
    for index, shape, _ in dense_covariances(angle, frame_i, frame_j, n_angles, n_frames, gamma, unit):
        s2 = residual[index] @ np.linalg.solve(shape, residual[index]) / index.size  # maximises over s_a^2
        sigma = s2 * shape
        dense_value += -0.5 * (np.linalg.slogdet(sigma)[1] + residual[index] @ np.linalg.solve(sigma, residual[index]))
        dense_variance.append(s2)
    assert value == pytest.approx(dense_value, rel=1e-11)
    np.testing.assert_allclose(variance, dense_variance, rtol=1e-11)


def simulated_noise(rng, angle, frame_i, frame_j, n_angles, n_frames, point_sigma, frame_sigma):
    """``point_sigma e + u_i + u_j``, ``u`` of std ``frame_sigma`` per (angle, frame)."""
    frame_terms = frame_sigma * rng.standard_normal((n_angles, n_frames))
    return point_sigma * rng.standard_normal(angle.size) + frame_terms[angle, frame_i] + frame_terms[angle, frame_j]


# 6 angles x 60 frames: 360 frame terms, so the relative std of the estimate of fs^2 is about
# sqrt(2 / 360) = 7.5%; at gamma = 0 the estimate's scale is about 0.075 / (N - 2) = 0.0013.
@pytest.mark.parametrize(
    ("pattern", "true_gamma", "tolerance"),
    [("full", 0.0, 0.01), ("full", 1.0, 0.3), ("full", 9.0, 0.3), ("dropped", 1.0, 0.3)],
)
def test_gamma_estimate_recovers_the_simulated_ratio(pattern, true_gamma, tolerance):
    """Per draw within ``tolerance`` (relative; absolute at 0), about 4 std; the mean of 5 draws within a third of it."""
    n_angles, n_frames, point_sigma = 6, 60, 0.01
    rng = np.random.default_rng(20)
    angle, frame_i, frame_j = point_set(n_angles, n_frames, pattern, rng)
    patterns = frame_patterns(frame_gram(angle, frame_i, frame_j, n_angles=n_angles, n_frames=n_frames))
    assert all((p.eigenvectors is None) == (pattern == "full") for p in patterns)
    estimates, variances = [], []
    for _ in range(5):
        noise = simulated_noise(rng, angle, frame_i, frame_j, n_angles, n_frames, point_sigma, point_sigma * np.sqrt(true_gamma))
        sums = frame_sums(angle, frame_i, frame_j, noise, n_angles=n_angles, n_frames=n_frames)
        gamma, variance = estimate_frame_noise_ratio(sums, patterns)
        best = profile_loglikelihood(sums, patterns, gamma)[0]
        for nearby in (gamma * 0.99, gamma * 1.01 + 1e-6):
            assert profile_loglikelihood(sums, patterns, nearby)[0] <= best
        estimates.append(gamma)
        variances.append(variance)
    scale = true_gamma if true_gamma > 0 else 1.0
    errors = (np.array(estimates) - true_gamma) / scale
    assert np.all(np.abs(errors) < tolerance), estimates
    assert abs(errors.mean()) < tolerance / 3, estimates
    np.testing.assert_allclose(np.sqrt(variances), point_sigma, rtol=0.05)
