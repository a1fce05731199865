"""The frame-block jackknife: block layout, covariance formula, and its behaviour on data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_nlsq_fit import STATIC_TRUTH, fit, simulate

from homodyne_mpi.cmc.calibration import likelihood_calibration, t_widening
from homodyne_mpi.nlsq.jackknife import (
    frame_blocks,
    frame_corrected_covariance,
    frame_influence,
    independent_noise_covariance,
    influence_blocks,
    jackknife_covariance,
)


@pytest.mark.parametrize("n_frames, n_blocks", [(100, 20), (101, 7), (5, 20)])
def test_frame_blocks_are_contiguous_and_even(n_frames, n_blocks):
    blocks = frame_blocks(n_frames, n_blocks)
    assert blocks[0, 0] == 0 and blocks[-1, 1] == n_frames
    np.testing.assert_array_equal(blocks[1:, 0], blocks[:-1, 1])
    sizes = blocks[:, 1] - blocks[:, 0]
    assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    assert len(blocks) == min(n_blocks, n_frames)


def assert_partition(blocks, n_frames, n_blocks):
    assert len(blocks) == min(n_blocks, n_frames)
    assert blocks[0, 0] == 0 and blocks[-1, 1] == n_frames
    np.testing.assert_array_equal(blocks[1:, 0], blocks[:-1, 1])
    assert np.all(blocks[:, 1] > blocks[:, 0])


def test_influence_blocks_give_each_block_an_equal_share():
    influence = np.r_[np.full(4, 0.1), np.full(96, 0.6 / 96)]  # four heavy first frames
    blocks = influence_blocks(influence, 10)
    assert_partition(blocks, 100, 10)
    np.testing.assert_array_equal(blocks[:4], [[0, 1], [1, 2], [2, 3], [3, 4]])
    shares = np.array([influence[a:b].sum() for a, b in blocks])
    np.testing.assert_allclose(shares, 0.1, atol=0.6 / 96 + 1e-12)


@pytest.mark.parametrize("n_frames, n_blocks", [(100, 20), (101, 7), (5, 20)])
def test_influence_blocks_of_uniform_influence_are_the_even_blocks(n_frames, n_blocks):
    blocks = influence_blocks(np.ones(n_frames), n_blocks)
    assert_partition(blocks, n_frames, n_blocks)
    assert np.ptp(blocks[:, 1] - blocks[:, 0]) <= 1


def test_a_frame_heavier_than_one_block_is_a_block_of_its_own_and_none_is_empty():
    influence = np.r_[np.zeros(10), 1.0, np.zeros(39)]
    blocks = influence_blocks(influence, 8)
    assert_partition(blocks, 50, 8)
    assert [10, 11] in blocks.tolist()
    assert_partition(influence_blocks(np.zeros(50), 8), 50, 8)  # no influence: even blocks


def test_frame_influence_is_each_frames_share_of_the_physical_variance():
    rng = np.random.default_rng(3)
    n_frames, n_params = 30, 5  # two scaling parameters, three physical
    sensitivity = rng.standard_normal((n_frames, n_params))
    sensitivity[0, 2:] *= 20.0  # frame 0 moves the physical parameters most
    a = rng.standard_normal((n_params, n_params))
    covariance = a @ a.T + np.eye(n_params)
    free = np.array([True, True, True, False, True])
    influence = frame_influence(sensitivity, 7.0 * covariance, free, slice(2, 5))
    moves = sensitivity[:, free] @ covariance[np.ix_(free, free)]
    squared = moves[:, [2, 3]] ** 2  # free physical parameters: 2 and 4
    np.testing.assert_allclose(influence, (squared / squared.sum(axis=0)).mean(axis=1), rtol=1e-12)
    assert influence.sum() == pytest.approx(1.0) and np.argmax(influence) == 0
    none_free = frame_influence(sensitivity, covariance, np.array([True, True, False, False, False]), slice(2, 5))
    np.testing.assert_allclose(none_free, 1.0 / n_frames)


def test_jackknife_covariance_of_a_mean_is_its_variance():
    """Delete-one-block means of K blocks of iid data: the jackknife gives var(mean)."""
    rng = np.random.default_rng(4)
    data = rng.standard_normal((2000, 2)) @ np.array([[1.0, 0.0], [0.6, 0.8]])
    blocks = np.array_split(np.arange(len(data)), 40)
    replicates = np.array([np.delete(data, block, axis=0).mean(axis=0) for block in blocks])
    covariance = jackknife_covariance(replicates)
    expected = np.cov(data.T) / len(data)
    np.testing.assert_allclose(covariance, expected, rtol=0.35, atol=2e-5)


def cross_deletion_study(noise: str, n_frames: int = 120, n_blocks: int = 10, repeats: int = 400):
    """Mean of the upper triangle over ``repeats`` simulated two-time matrices.

    Returns the mean replicate covariance, the true variance of the mean, and the
    expected independent-noise part ``(K-1)/K sum_b (C_b - C)`` for unit noise.
    """
    rng = np.random.default_rng(11)
    upper = np.triu(np.ones((n_frames, n_frames), dtype=bool), k=1)
    if noise == "independent":
        values = rng.standard_normal((repeats, n_frames, n_frames))
    else:  # shared by a frame's row and column
        frame_terms = rng.standard_normal((repeats, n_frames))
        values = frame_terms[:, :, None] + frame_terms[:, None, :]
    values = np.where(upper, values, 0.0)
    frames = np.arange(n_frames)
    kept = []
    for first, stop in frame_blocks(n_frames, n_blocks):
        inside = (frames >= first) & (frames < stop)
        kept.append(upper & ~inside[:, None] & ~inside[None, :])
    kept = np.array(kept)
    means = values.sum(axis=(1, 2)) / upper.sum()
    replicates = np.einsum("rij,kij->rk", values, kept) / kept.sum(axis=(1, 2))
    replicate_variance = np.mean([jackknife_covariance(r[:, None])[0, 0] for r in replicates])
    model = np.array([[1.0 / upper.sum()]])
    left_out = (1.0 / kept.sum(axis=(1, 2)))[:, None, None]
    return replicate_variance, means.var(), independent_noise_covariance(model, left_out)[0, 0]


def test_replicates_hold_the_expected_independent_part_and_frame_noise_once():
    """The premise of the correction, on the mean of simulated two-time matrices."""
    independent, true_independent, expected = cross_deletion_study("independent")
    assert expected / true_independent > 2.0  # each off-diagonal point is left out twice
    assert independent == pytest.approx(expected, rel=0.1)
    shared, true_shared, _ = cross_deletion_study("frame")
    assert shared / true_shared == pytest.approx(1.0, rel=0.1)


def test_corrected_covariance_keeps_the_model_part_once_and_adds_the_excess():
    rng = np.random.default_rng(2)
    scales = np.outer([1e4, 1.0, 1e-5, 1.0], [1e4, 1.0, 1e-5, 1.0])  # parameter scales as in the fit
    a = rng.standard_normal((4, 4))
    model = (a @ a.T + np.diag([1.0, 2.0, 3.0, 4.0])) * scales
    b = rng.standard_normal((4, 2))
    excess = (b @ b.T) * scales
    independent = 2.05 * model
    np.testing.assert_allclose(frame_corrected_covariance(independent + excess, model, independent), model + excess, rtol=1e-9)
    # Less spread than independent noise alone would give: the model covariance, never below
    np.testing.assert_allclose(frame_corrected_covariance(1.5 * model, model, independent), model, rtol=1e-9)
    # A fixed parameter (zero model variance) stays zero
    model[3, :] = model[:, 3] = 0.0
    corrected = frame_corrected_covariance(2.05 * model, model, 2.05 * model)
    assert np.all(corrected[3] == 0.0) and np.all(corrected[:, 3] == 0.0)


@pytest.mark.timeout(300)
def test_speckle_noise_widens_the_jackknife_but_not_the_model_error(tmp_path):
    jackknife = {"optimization.nlsq.uncertainty": "jackknife", "optimization.nlsq.jackknife_blocks": 10}
    cfg = simulate(tmp_path, "static", STATIC_TRUTH, n_frames=120, **jackknife)
    _, plain = fit(cfg)
    speckle_dir = tmp_path / "speckle"
    speckle_dir.mkdir()
    from homodyne_mpi.data.simulate import simulate_dataset

    simulate_dataset(
        cfg.experimental_data.file_path,
        mode="static",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=120,
        gap=2e6,
        physical=STATIC_TRUTH,
        contrast=[0.28, 0.3, 0.32, 0.3, 0.29, 0.31],
        offset=[1.0, 1.002, 0.998, 1.001, 0.999, 1.0],
        phi=[-60.0, -30.0, 0.0, 30.0, 60.0, 90.0],
        noise_sigma=0.01,
        seed=5,
        noise_model="speckle",
    )
    problem, speckled = fit(cfg)
    physical = slice(12, 15)
    plain_ratio = plain.std_jackknife[physical] / plain.std[physical]
    speckle_ratio = speckled.std_jackknife[physical] / speckled.std[physical]
    assert np.all(plain_ratio >= 1.0) and np.all(plain_ratio < 1.6), plain_ratio
    assert np.all(speckle_ratio > 2.0), speckle_ratio
    assert np.all(speckle_ratio > plain_ratio)
    assert plain.jackknife.converged.mean() > 0.7
    # the CMC tempering: the median variance ratio, its excess over 1 widened by t at the replicates' dof
    dof = speckled.jackknife.effective_dof[physical]
    assert np.all((dof >= 1.0) & (dof <= 10.0)), dof
    widened = 1.0 + (speckle_ratio**2 - 1.0) * t_widening(dof)
    assert likelihood_calibration(speckled, problem) == pytest.approx(np.median(widened), rel=1e-9)
    assert likelihood_calibration(speckled, problem) > np.median(speckle_ratio**2)
    # independent noise: whatever excess the replicates show is within chance, so no tempering
    assert likelihood_calibration(plain, problem) == 1.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shear_offset", [-2e-5, -1.5e-3])  # the second floors the shear rate early on
def test_rate_curves_and_their_jacobian_are_the_models_rates_and_their_autodiff_slopes(shear_offset):
    """The bands' NumPy rates against ``model.transport`` (JAX) and ``jax.jacfwd`` of it."""
    import jax
    import jax.numpy as jnp

    from homodyne_mpi.model import ModelSpec
    from homodyne_mpi.model.transport import power_law_rate, rate_times
    from homodyne_mpi.nlsq.bands import rate_curves_and_jacobian

    spec = ModelSpec("laminar_flow", "paper", 0.005, 0.1, 40, gap=2e6)
    physical = np.array([1.0e4, -0.5, 5.0, 1e-3, 0.3, shear_offset, 4.0])
    t = rate_times(spec.n_frames, spec.dt)

    def rates(p):
        return jnp.stack([power_law_rate(t, p[0], p[1], p[2]), power_law_rate(t, p[3], p[4], p[5])])

    curves, jacobian = rate_curves_and_jacobian(physical, spec)
    np.testing.assert_allclose(curves, np.asarray(rates(jnp.asarray(physical))), rtol=1e-13)
    np.testing.assert_allclose(jacobian, np.asarray(jax.jacfwd(rates)(jnp.asarray(physical))), rtol=1e-12, atol=1e-300)


def test_fit_file_holds_rate_bands(tmp_path):
    from conftest import run_cli, write_config

    from homodyne_mpi.data.simulate import simulate_dataset

    data = tmp_path / "flow.h5"
    simulate_dataset(
        data,
        mode="laminar_flow",
        shear_form="paper",
        q=0.0054,
        dt=0.1,
        n_frames=60,
        gap=2e6,
        physical=[10000.0, -0.5, 5.0, 1e-4, 0.2, 1e-5, 4.0],
        contrast=0.3,
        offset=1.0,
        phi=[0.0, 45.0, 90.0],
        noise_sigma=0.01,
        seed=1,
    )
    config = write_config(
        tmp_path / "flow.yaml",
        "laminar_flow",
        **{
            "analyzer_parameters.dt": 0.1,
            "analyzer_parameters.end_frame": 60,
            "experimental_data.file_path": str(data),
            "optimization.nlsq.uncertainty": "jackknife",
            "optimization.nlsq.jackknife_blocks": 6,
        },
    )
    completed = run_cli("run", str(config), "--output-dir", str(tmp_path / "out"), timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    with h5py.File(tmp_path / "out" / "flow" / "nlsq" / "fit.h5") as handle:
        t = handle["bands/t"][:]
        diffusion = handle["bands/D"][:]
        assert t.shape == diffusion.shape == (60,)
        assert np.all(handle["bands/D_std"][:] > 0) and np.all(handle["bands/gamma_dot_std"][:] > 0)
        np.testing.assert_allclose(handle["bands/D_std"][:], handle["bands/D_std_jackknife"][:])
        assert handle["jackknife/replicates"].shape == (6, 13)
        np.testing.assert_allclose(handle["covariance"][:], handle["covariance_jackknife"][:])
        assert diffusion[5] == pytest.approx(10000.0 * (5 * 0.1) ** -0.5 + 5.0, rel=0.05)


def test_groups_are_clipped_apart_and_their_cross_excess_is_left_out():
    rng = np.random.default_rng(8)
    model = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    noise = rng.standard_normal((5, 5))
    difference = (noise + noise.T) / 2
    difference[:3, :3] = -np.eye(3)  # the first group's excess is negative: clipped to zero
    independent = 2.0 * model
    groups = [np.arange(3), np.arange(3, 5)]
    corrected = frame_corrected_covariance(independent + difference, model, independent, groups)
    np.testing.assert_allclose(corrected[:3, :3], model[:3, :3], rtol=1e-12)
    assert np.all(corrected[:3, 3:] == 0.0)
    scale = np.sqrt(np.diag(model)[3:])
    from homodyne_mpi.nlsq.linalg import psd_part_keeping_variances

    excess = psd_part_keeping_variances(difference[3:, 3:] / np.outer(scale, scale)) * np.outer(scale, scale)
    expected = model[3:, 3:] + excess
    np.testing.assert_allclose(corrected[3:, 3:], expected, rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(corrected) > 0)
    # one group of all parameters: each variance is still its own difference clipped at
    # zero (eigenvalue clipping alone would raise the first three above the model's)
    together = frame_corrected_covariance(independent + difference, model, independent)
    np.testing.assert_allclose(together[:3, :3], model[:3, :3], rtol=1e-12)
    np.testing.assert_allclose(np.diag(together), np.diag(corrected), rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(together - model) > -1e-12)


def test_excess_variances_of_zero_mean_noise_have_median_zero():
    """Eigenvalue clipping biases every variance up; the kept variances are unbiased in median."""
    from homodyne_mpi.nlsq.linalg import psd_part, psd_part_keeping_variances

    rng = np.random.default_rng(3)
    noise = rng.standard_normal((2000, 3, 3))
    differences = (noise + noise.transpose(0, 2, 1)) / 2
    kept = np.array([np.diag(psd_part_keeping_variances(d)) for d in differences])
    clipped = np.array([np.diag(psd_part(d)) for d in differences])
    assert np.all(np.abs(np.mean(kept > 0, axis=0) - 0.5) < 0.04)  # positive half the time: median 0
    assert np.all(np.mean(clipped > 0, axis=0) > 0.8) and np.all(np.median(clipped, axis=0) > 0.3)
    np.testing.assert_allclose(kept, np.clip(np.diagonal(differences, axis1=1, axis2=2), 0, None), atol=1e-12)
    assert min(np.linalg.eigvalsh(psd_part_keeping_variances(d)).min() for d in differences[:200]) > -1e-12
