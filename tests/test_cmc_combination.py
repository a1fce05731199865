"""The consensus maths of ``homodyne_mpi.cmc.combination`` on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from homodyne_mpi.cmc.combination import (
    combine,
    consensus_draws,
    gaussian_product,
    modified_zscores,
    precision,
    robust_outliers,
    shard_moments,
)


def exact_moment_draws(rng, mean, covariance, n):
    """Draws whose sample mean and covariance equal ``mean``/``covariance`` exactly."""
    mean = np.atleast_1d(np.asarray(mean, dtype=float))
    covariance = np.atleast_2d(np.asarray(covariance, dtype=float))
    raw = rng.standard_normal((n, mean.size))
    raw -= raw.mean(axis=0)
    whiten = np.linalg.cholesky(np.cov(raw, rowvar=False).reshape(mean.size, mean.size))
    standard = np.linalg.solve(whiten, raw.T).T
    return mean + standard @ np.linalg.cholesky(covariance).T


def test_two_gaussian_shards_combine_to_their_product():
    rng = np.random.default_rng(0)
    shards = [exact_moment_draws(rng, [1.0], [[1.0]], 200_000), exact_moment_draws(rng, [3.0], [[1.0]], 200_000)]
    for method in ("consensus_mc", "gaussian_product", "robust_consensus_mc"):
        combined = combine(shards, method=method)
        assert combined.mean[0] == pytest.approx(2.0, abs=1e-9 if method != "gaussian_product" else 1e-12)
        # consensus pairs independent draws: variance 0.5 up to the sample correlation
        tolerance = 1e-12 if method == "gaussian_product" else 0.01
        assert combined.covariance[0, 0] == pytest.approx(0.5, abs=tolerance)
        assert combined.used == [0, 1]


def test_gaussian_product_draws_follow_the_product():
    rng = np.random.default_rng(1)
    shards = [exact_moment_draws(rng, [1.0], [[1.0]], 50_000), exact_moment_draws(rng, [3.0], [[1.0]], 50_000)]
    mean, covariance, draws = gaussian_product(shards, seed=3)
    assert mean == pytest.approx([2.0])
    assert covariance[0, 0] == pytest.approx(0.5)
    assert draws.shape == (50_000, 1)
    assert draws.mean() == pytest.approx(2.0, abs=0.02)
    assert draws.var() == pytest.approx(0.5, rel=0.03)
    _, _, again = gaussian_product(shards, seed=3)
    np.testing.assert_array_equal(draws, again)


def test_robust_combination_excludes_the_outlying_shard():
    rng = np.random.default_rng(2)
    means = [1.0, 1.1, 0.9, 1.05, 5.0]
    shards = [exact_moment_draws(rng, [m], [[0.01]], 20_000) for m in means]
    combined = combine(shards, method="robust_consensus_mc")
    assert combined.outliers == [4]
    assert combined.used == [0, 1, 2, 3]
    assert abs(combined.zscores[4, 0]) > 3.5
    assert np.all(np.abs(combined.zscores[:4, 0]) < 3.5)
    # equal precisions: the consensus mean is the average of the kept means
    assert combined.mean[0] == pytest.approx(np.mean(means[:4]), abs=1e-9)
    assert combined.covariance[0, 0] == pytest.approx(0.01 / 4, rel=0.05)
    plain = combine(shards, method="consensus_mc")
    assert plain.used == [0, 1, 2, 3, 4] and plain.outliers == []
    assert plain.mean[0] == pytest.approx(np.mean(means), abs=1e-9)


def test_modified_zscores_follow_iglewicz_hoaglin():
    means = np.array([[1.0], [1.1], [0.9], [1.05], [5.0]])
    scores = modified_zscores(means)
    # median 1.05, MAD 0.05
    assert scores[:, 0] == pytest.approx(0.6745 * (means[:, 0] - 1.05) / 0.05)
    # the shards' own width floors the MAD: spread of agreeing shards is not an outlier
    tight = np.array([[1.0], [1.0], [1.0], [1.0], [1.3]])
    assert robust_outliers(tight, np.full((5, 1), 0.2))[0] == []
    assert robust_outliers(tight)[0] == [4]  # MAD 0: the mean-absolute-deviation fallback
    assert robust_outliers(means[:2])[0] == []  # too few shards to judge
    # a shard far out whose own posterior is that broad is no outlier (static_issue seed 0's
    # shard 0: contrast 0.44 +- 0.057 against 0.21 to 0.25 +- 0.014 to 0.024 in the others)
    contrast = np.array([[0.4427], [0.2072], [0.2537], [0.234]])
    own = np.array([[0.0566], [0.0143], [0.0243], [0.0193]])
    assert robust_outliers(contrast, 2.0 * own)[0] == []
    assert robust_outliers(contrast, np.full((4, 1), 2.0 * np.median(own)))[0] == [0]


def linear_gaussian_case(rng, n_shards=4, d=3, n_obs=40, noise=0.5):
    """Shard posteriors of a Bayesian linear model with prior tempered to 1/K, exactly."""
    truth = rng.normal(size=d)
    prior_precision = np.diag([0.5, 1.0, 2.0])
    full_precision = prior_precision.copy()
    full_rhs = np.zeros(d)
    shards = []
    for _ in range(n_shards):
        design = rng.normal(size=(n_obs, d)) + np.array([1.0, 0.0, 0.5])  # correlated columns
        y = design @ truth + noise * rng.normal(size=n_obs)
        shard_precision = prior_precision / n_shards + design.T @ design / noise**2
        shard_rhs = design.T @ y / noise**2
        shards.append((np.linalg.solve(shard_precision, shard_rhs), np.linalg.inv(shard_precision)))
        full_precision += design.T @ design / noise**2
        full_rhs += shard_rhs
    return shards, np.linalg.solve(full_precision, full_rhs), np.linalg.inv(full_precision)


@pytest.mark.parametrize("method", ["consensus_mc", "gaussian_product", "robust_consensus_mc"])
def test_multivariate_gaussian_posterior_is_recovered(method):
    rng = np.random.default_rng(4)
    shards, full_mean, full_covariance = linear_gaussian_case(rng)
    draws = [rng.multivariate_normal(m, c, size=40_000) for m, c in shards]
    combined = combine(draws, method=method, seed=5)
    assert combined.used == [0, 1, 2, 3]
    std = np.sqrt(np.diag(full_covariance))
    # Monte Carlo error of a mean from 40,000 draws is std/200
    np.testing.assert_allclose(combined.mean, full_mean, atol=float(4 * std.max() / 200))
    np.testing.assert_allclose(combined.covariance, full_covariance, atol=0.03 * float(np.max(np.diag(full_covariance))))


def test_exact_moments_give_the_exact_product():
    rng = np.random.default_rng(6)
    shards, full_mean, full_covariance = linear_gaussian_case(rng)
    draws = [exact_moment_draws(rng, m, c, 5_000) for m, c in shards]
    mean, covariance, _ = gaussian_product(draws)
    np.testing.assert_allclose(mean, full_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(covariance, full_covariance, rtol=1e-9, atol=1e-15)
    consensus = consensus_draws(draws)
    np.testing.assert_allclose(consensus.mean(axis=0), full_mean, rtol=1e-9, atol=1e-12)


def test_fixed_parameters_pass_through_with_zero_precision():
    rng = np.random.default_rng(7)
    shards = []
    for m in (0.0, 2.0):
        draws = np.column_stack([rng.normal(m, 1.0, 1000), np.full(1000, 7.5)])
        shards.append(draws)
    assert precision(shard_moments(shards[0])[1])[1, 1] == 0.0
    for method in ("consensus_mc", "gaussian_product", "robust_consensus_mc"):
        combined = combine(shards, method=method)
        assert np.all(combined.draws[:, 1] == 7.5)
        assert np.isfinite(combined.draws).all()


def test_unknown_method_and_empty_input_are_refused():
    with pytest.raises(ValueError, match="combination method"):
        combine([np.zeros((3, 1))], method="average")
    with pytest.raises(ValueError):
        combine([], method="consensus_mc")


def test_barycenter_keeps_a_skewed_shape_where_the_consensus_average_shifts_it():
    """Four shards with the same right-skewed (log-normal) shape at different locations: the
    barycentre is that shape at the average location, its quantiles the log-normal's
    (SciPy) shifted by it, its mean the shard means' average. The consensus average of the same
    draws has the mean of the shape but the quantiles of a narrower, more symmetric law."""
    from scipy import stats

    rng = np.random.default_rng(5)
    shape = stats.lognorm(s=0.6)
    shifts = np.array([0.0, 0.4, -0.3, 0.5])
    shards = [
        np.column_stack([shape.rvs(size=40_000, random_state=rng) + shift, rng.normal(2.0, 0.1, 40_000)]) for shift in shifts
    ]
    combined = combine(shards, method="barycenter")
    assert combined.used == [0, 1, 2, 3] and combined.outliers == []
    assert combined.draws.shape == (160_000, 2)
    centre = shape.mean() + shifts.mean()
    assert combined.mean[0] == pytest.approx(np.mean([d[:, 0].mean() for d in shards]), abs=1e-12)
    assert combined.mean[0] == pytest.approx(centre, abs=0.01)
    levels = np.array([0.05, 0.5, 0.95])
    expected = shape.ppf(levels) - shape.mean() + centre
    np.testing.assert_allclose(np.quantile(combined.draws[:, 0], levels), expected, atol=0.02)
    consensus = combine(shards, method="consensus_mc")
    q05, q95 = np.quantile(consensus.draws[:, 0], [0.05, 0.95])
    assert q95 - q05 < 0.7 * (expected[2] - expected[0])  # the average of 4 draws is about half as wide


def test_barycenter_drops_an_outlying_shard_first():
    rng = np.random.default_rng(6)
    shards = [exact_moment_draws(rng, [m], [[0.01]], 5_000) for m in (1.0, 1.1, 0.9, 1.05, 5.0)]
    combined = combine(shards, method="barycenter")
    assert combined.outliers == [4]
    # shards sampled with their likelihood to the power 5 are sqrt(5) narrower than the spread of
    # their estimates: a shard 5 of its own widths out is then no outlier
    spread = [exact_moment_draws(rng, [m], [[0.01]], 5_000) for m in (1.0, 1.05, 0.95, 1.0, 1.5)]
    assert combine(spread, method="barycenter").outliers == [4]
    assert combine(spread, method="barycenter", likelihood_power=5).outliers == []
    assert combined.mean[0] == pytest.approx(np.mean([1.0, 1.1, 0.9, 1.05]), abs=1e-9)
    assert combined.covariance[0, 0] == pytest.approx(0.01, rel=0.01)  # each shard's own width, not 1/K of it
