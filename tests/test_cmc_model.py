"""The shard model's coordinates: profiled contrast/offset pairs, whitening, log density.

The references are computed here without the code under test: NumPy least squares for
the pairs, SciPy's truncated normal and half-normal for the priors, and the Jacobian of
the site-to-parameter map by automatic differentiation of that map alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_cmc_run import simulate

from homodyne_mpi.cmc.priors import build_priors, noise_scale_of
from homodyne_mpi.cmc.scaling import conditional_pairs, pair_chi2
from homodyne_mpi.cmc.shard_model import ShardData, ShardModel, unit_priors


def test_conditional_pairs_are_the_weighted_least_squares_fit_its_covariance_and_residual():
    rng = np.random.default_rng(1)
    n, pairs = 90, 3
    pair = np.repeat(np.arange(pairs), n // pairs)
    g = rng.uniform(0.1, 1.0, n)
    weight = rng.uniform(50.0, 150.0, n)
    value = 1.0 + 0.3 * g + rng.normal(0.0, 0.01, n)
    noise, calibration = 1.3, 2.5
    fit = conditional_pairs(jnp.asarray(g), jnp.asarray(value), jnp.asarray(weight), jnp.asarray(pair), pairs, noise, calibration)
    mean_o, mean_c, l11, l21, l22 = (np.asarray(a) for a in fit[:5])
    chi2_at_fit = np.asarray(pair_chi2(fit.sums, fit.mean_offset, fit.mean_contrast))
    for p in range(pairs):
        mine = pair == p
        design = np.stack([np.ones(mine.sum()), g[mine]], axis=1) * weight[mine, None]
        least_squares, *_ = np.linalg.lstsq(design, value[mine] * weight[mine], rcond=None)
        np.testing.assert_allclose([mean_o[p], mean_c[p]], least_squares, rtol=1e-9)
        covariance = noise**2 * calibration * np.linalg.inv(design.T @ design)
        factor = np.array([[l11[p], 0.0], [l21[p], l22[p]]])
        np.testing.assert_allclose(factor @ factor.T, covariance, rtol=1e-9)
        residual = value[mine] * weight[mine] - design @ least_squares
        np.testing.assert_allclose(chi2_at_fit[p], residual @ residual, rtol=1e-8)


@pytest.mark.parametrize("decay", ["varied", "none"])
def test_with_a_reference_the_pairs_follow_the_gaussian_conditional_even_without_decay(decay):
    """With a Gaussian reference on (offset, contrast) the map's mean and factor are that
    prior's conditional posterior (NumPy: precision ``X^T X / (noise^2 c) + R``), also where
    ``g`` is the same at every point, where least squares alone is singular: a point with
    ``D(t)`` at its floor made the old map's mean and factor infinite and froze a chain."""
    rng = np.random.default_rng(7)
    n, pairs = 60, 2
    pair = np.repeat(np.arange(pairs), n // pairs)
    g = rng.uniform(0.1, 1.0, n) if decay == "varied" else np.ones(n)
    weight = rng.uniform(50.0, 150.0, n)
    value = 1.0 + 0.3 * g + rng.normal(0.0, 0.01, n)
    noise, calibration = 1.3, 2.5
    ref_mean, ref_precision = np.array([[1.0, 1.0], [0.5, 0.5]]), np.array([[4.0, 4.0], [4.0, 4.0]])
    fit = conditional_pairs(
        jnp.asarray(g),
        jnp.asarray(value),
        jnp.asarray(weight),
        jnp.asarray(pair),
        pairs,
        noise,
        calibration,
        (jnp.asarray(ref_mean), jnp.asarray(ref_precision)),
    )
    mean_o, mean_c, l11, l21, l22 = (np.asarray(a) for a in fit[:5])
    for p in range(pairs):
        mine = pair == p
        design = np.stack([np.ones(mine.sum()), g[mine]], axis=1) * weight[mine, None]
        precision = design.T @ design / (noise**2 * calibration) + np.diag(ref_precision[:, p])
        rhs = design.T @ (value[mine] * weight[mine]) / (noise**2 * calibration) + ref_precision[:, p] * ref_mean[:, p]
        np.testing.assert_allclose([mean_o[p], mean_c[p]], np.linalg.solve(precision, rhs), rtol=1e-9)
        factor = np.array([[l11[p], 0.0], [l21[p], l22[p]]])
        np.testing.assert_allclose(factor @ factor.T, np.linalg.inv(precision), rtol=1e-8)
        if decay == "none":  # only offset + contrast is measured: the conditional is wide along the other direction
            assert np.sqrt(np.linalg.inv(precision)[0, 0]) > 0.1


@pytest.fixture(scope="module")
def shard():
    """All points of a small static data set as one shard, an exact warm start, calibration 1.7."""
    sim = simulate("static", n_frames=20, phi=(0.0, 60.0))
    priors = build_priors(
        sim.cfg, sim.problem, sim.warm_start, n_shards=1, noise_scale=noise_scale_of(sim.points.weight), calibration=1.7
    )
    model = ShardModel(priors, sim.problem.spec, sim.problem.layout, sim.problem.phi, calibration=1.7, n_points=len(sim.points))
    p = sim.points
    data = ShardData(*(jnp.asarray(a) for a in (p.angle, p.frame_i, p.frame_j, p.value, p.weight)))
    return sim, priors, model, data


def reference_log_posterior(sim, priors, theta_sampled, sigma, calibration):
    """Log posterior of (sampled parameters, sigma) from SciPy and NumPy, constants dropped."""
    from homodyne_mpi.model import c2_points

    unit = unit_priors(priors)
    z = (theta_sampled - priors.loc) / priors.scale
    a, b = (unit.low - unit.loc) / unit.scale, (unit.high - unit.loc) / unit.scale
    log_prior = np.sum(stats.truncnorm.logpdf(z, a, b, loc=unit.loc, scale=unit.scale))
    u = sigma / priors.noise_scale
    log_prior += stats.halfnorm.logpdf(u, scale=unit.noise_scale)
    theta = priors.base_theta.copy()
    theta[priors.index] = theta_sampled
    contrast, offset, physical = sim.problem.layout.split(jnp.asarray(theta))
    p = sim.points
    model = np.asarray(
        c2_points(physical, contrast, offset, jnp.asarray(sim.problem.phi), p.angle, p.frame_i, p.frame_j, sim.problem.spec)
    )
    residual = p.weight * (p.value - model) / u
    log_likelihood = -0.5 * np.sum(residual**2) - len(p) * np.log(u)
    return log_prior + log_likelihood / calibration


def test_the_log_density_of_the_site_is_the_posterior_times_the_jacobian(shard):
    """log density(w) - [log posterior(theta(w), sigma(w)) + log |det d(theta, sigma)/dw|]
    is the same constant at every w: the transforms and their log-Jacobians are exact."""
    sim, priors, model, data = shard
    assert model.n_pairs == 2  # both angles' pairs are profiled

    differences = density_minus_reference(model, data, lambda t, sigma: reference_log_posterior(sim, priors, t, sigma, 1.7), 3)
    assert np.ptp(differences) < 1e-6 * max(1.0, abs(differences[0]))


def density_minus_reference(model, data, reference, seed: int, draws: int = 5) -> list[float]:
    """``log density(w) - [reference(theta(w), sigma(w)) + log |det d(theta, sigma)/dw|]`` at ``draws``
    random sites ``w``: the same constant at every ``w`` when the transforms and log-Jacobians are exact."""
    rng = np.random.default_rng(seed)
    return density_minus_reference_at(
        model, data, reference, [jnp.asarray(rng.normal(0.0, 0.7, model.n_site)) for _ in range(draws)]
    )


@pytest.fixture(scope="module")
def gradient(shard):
    """The jitted gradient of the site's log density (compiled once for the module)."""
    _, _, model, data = shard
    return jax.jit(jax.grad(lambda v: model.log_density(v, data)))


def test_the_gradient_of_the_log_density_matches_finite_differences(shard, gradient):
    _, _, model, data = shard
    w = jnp.asarray(np.random.default_rng(4).normal(0.0, 0.5, model.n_site))
    log_density = jax.jit(lambda v: model.log_density(v, data))

    def at(k: int, shift: float) -> float:
        return float(log_density(w.at[k].add(shift)))

    # Fourth-order central differences with a wide step: the chi-square comes from the pair sums
    # as a difference of terms ~1e5 times larger (scaling.py), so the density carries a rounding
    # error near 1e-7 that a step of 1e-5 would turn into 1e-2 in the quotient.
    step = 1e-2
    numeric = [
        (8 * (at(k, step) - at(k, -step)) - (at(k, 2 * step) - at(k, -2 * step))) / (12 * step) for k in range(model.n_site)
    ]
    np.testing.assert_allclose(np.asarray(gradient(w)), numeric, rtol=1e-4, atol=1e-5)


def test_the_site_is_close_to_unit_normal_at_the_warm_start(shard):
    """With an exact warm start the Hessian of -log density at w = 0 (central differences
    of the gradient) is near the identity: the pairs exactly, the physical parameters and
    the noise up to their nonlinearity."""
    _, _, model, data = shard
    hessian = site_hessian(model, data)
    values = np.linalg.eigvalsh(hessian)
    pair_block = np.diag(hessian)[model.priors.n_sampled - 2 * model.n_pairs : model.priors.n_sampled]
    np.testing.assert_allclose(pair_block, 1.0, atol=0.02)
    assert values.min() > 0.5 and values.max() < 2.0


def site_hessian(model, data, step: float = 1e-4) -> np.ndarray:
    """Hessian of ``-log density`` at ``w = 0`` by central differences of its autodiff gradient."""
    gradient = jax.jit(jax.grad(lambda v: model.log_density(v, data)))
    unit = np.eye(model.n_site)
    rows = [
        -(np.asarray(gradient(jnp.asarray(step * e))) - np.asarray(gradient(jnp.asarray(-step * e)))) / (2 * step) for e in unit
    ]
    hessian = np.stack(rows)
    return 0.5 * (hessian + hessian.T)


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_a_warm_start_on_a_bound_keeps_the_site_near_unit_scale(shard, side):
    """NLSQ often stops on a bound (laminar D_offset at -1e4): the whitening must not be set by the
    clamp's vanishing slope there. Before the reference point was moved inside, the Hessian at
    w = 0 had eigenvalues of 1e5 and -3e4 (NUTS' step size collapsed, every tree hit depth 10)."""
    sim, _, _, data = shard
    k = sim.problem.names.index("D_offset")
    lower, upper = sim.problem.lower.copy(), sim.problem.upper.copy()
    (lower if side == "lower" else upper)[k] = sim.warm_start.theta[k]  # the optimum sits on the bound
    problem = dataclasses.replace(sim.problem, lower=lower, upper=upper)
    priors = build_priors(sim.cfg, problem, sim.warm_start, n_shards=1, noise_scale=noise_scale_of(sim.points.weight))
    model = ShardModel(priors, problem.spec, problem.layout, problem.phi, n_points=len(sim.points))
    values = np.linalg.eigvalsh(site_hessian(model, data))
    assert values.min() > 0.2 and values.max() < 40.0, values
    # w = 0 lies inside the bound, where the posterior has its mass
    offset = float(np.asarray(model.sampled_vector({"w": jnp.zeros(model.n_site)}, data))[priors.names.index("D_offset")])
    inside = offset - lower[k] if side == "lower" else upper[k] - offset
    assert 0.1 * priors.scale[priors.names.index("D_offset")] < inside < priors.scale[priors.names.index("D_offset")]


def test_where_the_rate_is_at_its_floor_the_density_stays_exact_and_finite(shard, gradient):
    """``D_offset`` so negative that ``D(t)`` sits at its floor on every frame: no decay, ``g1^2 = 1``,
    and only ``offset + contrast`` is measured. The density must still be the posterior times the
    Jacobian (the same constant as at ordinary sites) with a finite gradient; with the pairs mapped
    by least squares alone the map divided by zero there and a chain that reached it froze."""
    sim, priors, model, data = shard
    names = list(priors.names)
    sampled = np.asarray(priors.loc, dtype=float).copy()
    sampled[names.index("D0")] = priors.low[names.index("D0")] * 1.5
    sampled[names.index("alpha")] = 0.0
    sampled[names.index("D_offset")] = priors.low[names.index("D_offset")] * 0.9  # D(t) < 0 on every frame
    w = jnp.asarray(model.site_of(sampled))
    assert np.isfinite(float(model.log_density(w, data)))
    assert np.all(np.isfinite(np.asarray(gradient(w))))
    reference = lambda t, sigma: reference_log_posterior(sim, priors, t, sigma, 1.7)  # noqa: E731
    ordinary = density_minus_reference(model, data, reference, 3, draws=2)
    floored = density_minus_reference_at(model, data, reference, [w, w.at[-3].add(1.5), w.at[-1].add(-1.0)])
    np.testing.assert_allclose(floored, ordinary[0], rtol=1e-6, atol=1e-6)


def density_minus_reference_at(model, data, reference, sites) -> list[float]:
    """``density_minus_reference`` at the given sites."""
    parameters = jax.jit(lambda w: model.sampled_vector({"w": w}, data))
    jacobian = jax.jit(jax.jacfwd(parameters))
    log_density = jax.jit(lambda w: model.log_density(w, data))
    differences = []
    for w in sites:
        vector = np.asarray(parameters(w))
        _, log_det = np.linalg.slogdet(np.asarray(jacobian(w)))
        differences.append(float(log_density(w)) - (reference(vector[:-1], vector[-1]) + log_det))
    return differences


def test_far_out_coordinates_of_a_pair_stay_inside_its_bounds(shard):
    """The pair map carries the whole real line into the bounds, with a finite density."""
    _, priors, model, data = shard
    start = model.priors.n_sampled - 2 * model.n_pairs  # first pair coordinate (offset[0])
    parameters = jax.jit(lambda w: model.sampled_vector({"w": w}, data))
    log_density = jax.jit(lambda w: model.log_density(w, data))
    for k in range(start, start + 2 * model.n_pairs):
        for far in (-12.0, 12.0):  # 12 widths: far beyond where NUTS goes
            w = jnp.zeros(model.n_site).at[k].set(far)
            vector = np.asarray(parameters(w))[:-1]
            assert np.all(vector >= priors.low) and np.all(vector <= priors.high)
            assert np.isfinite(float(log_density(w)))


def test_site_of_inverts_the_transform_and_places_the_chain_starts(shard):
    """``site_of`` (NumPy) is the inverse of ``transform`` (JAX) on the non-pair parameters, near a
    bound too; chains 1..n start at ``priors.chain_starts``, chain 0 and the rest at the NLSQ point."""
    sim, priors, model, data = shard
    other = np.arange(2 * model.n_pairs, priors.n_sampled)
    sampled = np.asarray(priors.loc, dtype=float).copy()
    width = priors.high - priors.low
    sampled[other] += np.linspace(-3.0, 5.0, other.size) * priors.scale[other]  # several widths out
    sampled[other[0]] = priors.low[other[0]] + 1e-3 * width[other[0]]  # close to a bound
    sampled[other] = np.clip(sampled[other], priors.low[other] + 1e-9 * width[other], priors.high[other])
    parameters = jax.jit(lambda w: model.sampled_vector({"w": w}, data))
    back = np.asarray(parameters(jnp.asarray(model.site_of(sampled))))[:-1]
    np.testing.assert_allclose(back[other], sampled[other], rtol=1e-9, atol=1e-9 * width[other].max())
    moved = ShardModel(
        dataclasses.replace(priors, chain_starts=np.stack([sampled, priors.loc])),
        sim.problem.spec,
        sim.problem.layout,
        sim.problem.phi,
        calibration=1.7,
        n_points=len(sim.points),
    )
    starts = moved.chain_starts(4)
    np.testing.assert_array_equal(starts[[0, 3]], 0.0)
    np.testing.assert_allclose(starts[1], model.site_of(sampled))
    np.testing.assert_allclose(starts[2], 0.0, atol=1e-12)  # loc maps to the NLSQ point, w = 0
    np.testing.assert_array_equal(model.chain_starts(4), 0.0)  # no flat profile: every chain at the NLSQ point


def test_barycenter_shards_sample_the_likelihood_to_the_power_k_with_the_full_prior(shard):
    """With ``combination.method: barycenter`` a shard of a quarter of the points (K = 4) has the
    full prior (SciPy's truncated normal at the prior width, half-normal of scale 3, no tempering)
    and its likelihood times 4 / calibration, exactly up to the Jacobian."""
    import copy

    sim, _, _, _ = shard
    cfg = copy.deepcopy(sim.cfg)
    cfg.optimization.cmc.combination.method = "barycenter"
    priors = build_priors(
        cfg, sim.problem, sim.warm_start, n_shards=4, noise_scale=noise_scale_of(sim.points.weight), calibration=1.7
    )
    assert priors.likelihood_power == 4 and priors.temper == 1.0
    quarter = np.arange(0, len(sim.points), 4)
    p = sim.points
    data = ShardData(*(jnp.asarray(a[quarter]) for a in (p.angle, p.frame_i, p.frame_j, p.value, p.weight)))
    model = ShardModel(priors, sim.problem.spec, sim.problem.layout, sim.problem.phi, calibration=1.7, n_points=quarter.size)

    def reference(theta_sampled, sigma):
        from homodyne_mpi.model import c2_points

        a = (priors.low - priors.mu) / priors.sigma
        b = (priors.high - priors.mu) / priors.sigma
        log_prior = np.sum(stats.truncnorm.logpdf(theta_sampled, a, b, loc=priors.mu, scale=priors.sigma))
        log_prior += stats.halfnorm.logpdf(sigma / priors.noise_scale, scale=3.0) - np.log(priors.noise_scale)
        theta = priors.base_theta.copy()
        theta[priors.index] = theta_sampled
        contrast, offset, physical = sim.problem.layout.split(jnp.asarray(theta))
        model_c2 = np.asarray(
            c2_points(
                physical,
                contrast,
                offset,
                jnp.asarray(sim.problem.phi),
                *(a[quarter] for a in (p.angle, p.frame_i, p.frame_j)),
                sim.problem.spec,
            )
        )
        u = sigma / priors.noise_scale
        residual = p.weight[quarter] * (p.value[quarter] - model_c2) / u
        return log_prior + 4.0 / 1.7 * (-0.5 * np.sum(residual**2) - quarter.size * np.log(u))

    differences = density_minus_reference(model, data, reference, 7, draws=4)
    assert np.ptp(differences) < 1e-6 * max(1.0, abs(differences[0]))
