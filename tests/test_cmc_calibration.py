"""The CMC likelihood calibration: jackknife/model variance ratio widened by Student's t."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from homodyne_mpi.cmc.calibration import (
    CREDIBLE_LEVEL,
    EXCESS_SIGNIFICANCE,
    MIN_DOF,
    significant_excess,
    t_widening,
    tempering_factor,
)
from homodyne_mpi.nlsq.jackknife import replicate_dof


@pytest.mark.parametrize("dof", [3.0, 5.0, 12.0])
def test_widened_interval_holds_its_level_when_the_variance_is_estimated(dof):
    """With s^2 ~ sigma^2 chi2_nu / nu, the normal interval widened by t_widening(nu) covers at the level."""
    rng = np.random.default_rng(7)
    n = 400_000
    error = rng.normal(size=n)
    variance_estimate = rng.chisquare(dof, size=n) / dof
    half_width = stats.norm.ppf(0.5 + CREDIBLE_LEVEL / 2) * np.sqrt(t_widening(dof) * variance_estimate)
    assert np.mean(np.abs(error) < half_width) == pytest.approx(CREDIBLE_LEVEL, abs=0.003)
    unwidened = stats.norm.ppf(0.5 + CREDIBLE_LEVEL / 2) * np.sqrt(variance_estimate)
    assert np.mean(np.abs(error) < unwidened) < CREDIBLE_LEVEL - 0.01


def test_widening_falls_to_one_with_many_degrees_of_freedom_and_stops_at_the_floor():
    widening = t_widening(np.array([MIN_DOF, 4.0, 20.0, 1e6]))
    assert np.all(np.diff(widening) < 0)
    assert widening[-1] == pytest.approx(1.0, abs=1e-5)
    assert widening[1] == pytest.approx((2.1318 / 1.6449) ** 2, rel=1e-3)
    assert t_widening(np.array([0.5]))[0] == pytest.approx(widening[0])


def test_tempering_factor_is_the_median_of_the_widened_ratios_of_the_chosen_parameters():
    std_model = np.array([1.0, 2.0, 0.5, 3.0])
    std_jackknife = np.array([3.0, 10.0, 2.0, 300.0])  # ratios^2: 9, 25, 16, 10000
    use = np.array([True, True, True, False])
    assert tempering_factor(std_jackknife, std_model, None, use) == pytest.approx(16.0)
    dof = np.array([1e6, 1e6, 4.0, 1e6])
    widened = tempering_factor(std_jackknife, std_model, dof, use)
    assert 1.0 + 15.0 * t_widening(4.0) > 25.0  # the widened third ratio now lies above the second
    assert widened == pytest.approx(25.0, rel=1e-4)


def test_tempering_widens_only_the_excess_over_the_model_variance():
    """Independent noise (jackknife = model error) is not tempered, however few the degrees of freedom."""
    std_model = np.array([1.0, 2.0, 0.5])
    use = np.ones(3, dtype=bool)
    dof = np.full(3, MIN_DOF)
    assert tempering_factor(std_model, std_model, dof, use) == 1.0
    assert tempering_factor(0.9 * std_model, std_model, dof, use) == 1.0
    slightly = tempering_factor(1.1 * std_model, std_model, dof, use)
    assert slightly == pytest.approx(1.0 + 0.21 * t_widening(MIN_DOF), rel=1e-9)
    assert slightly < 1.21 * t_widening(MIN_DOF) / 2  # the whole ratio widened: 3.8


def test_tempering_factor_is_one_without_usable_parameters_and_never_below_one():
    std_model = np.array([1.0, 0.0])
    assert tempering_factor(np.array([0.5, 2.0]), std_model, None, np.array([True, True])) == 1.0
    assert tempering_factor(np.array([2.0, 2.0]), std_model, None, np.array([False, True])) == 1.0


def test_replicate_dof_counts_blocks_that_share_the_spread():
    k = 20
    even = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)[:, None]  # every block moves the fit equally
    one = np.zeros((k, 1))
    one[3] = 5.0  # one block carries all the spread
    still = np.full((k, 1), 2.5)  # no block moves this parameter
    dof = replicate_dof(np.hstack([even, one, still]))
    assert dof[0] == pytest.approx(k)
    assert 1.0 <= dof[1] < 1.3
    assert dof[2] == k - 1


def test_an_excess_counts_above_the_chi_square_quantile_of_independent_noise():
    # two degrees of freedom: P(chi2_2 / 2 > x) = exp(-x), so the 5% point is -ln(0.05) = 2.996
    limit = -np.log(EXCESS_SIGNIFICANCE)
    assert not significant_excess(np.array([0.99 * limit]), np.array([2.0]))[0]
    assert significant_excess(np.array([1.01 * limit]), np.array([2.0]))[0]
    # with many degrees of freedom the replicates' variance is sharp: 1.2 is already significant
    assert significant_excess(np.array([1.2]), np.array([400.0]))[0]
    assert not significant_excess(np.array([1.2]), np.array([20.0]))[0]


def test_chance_excesses_of_independent_noise_rarely_temper_the_likelihood():
    """Replicate variances ``v_ind chi2_nu / nu`` at 2 to 3 degrees of freedom (independent noise): without
    the significance test most fits with an excess get a factor above 1.3; with it, about 5% of parameters count."""
    rng = np.random.default_rng(11)
    n_fits, n_params = 4000, 3
    dof = rng.uniform(2.0, 3.0, size=(n_fits, n_params))
    independent = np.full(n_params, 2.05)  # model variances; v_ind of 20 blocks
    ratio = rng.chisquare(dof) / dof
    variance_jackknife = 1.0 + np.maximum(ratio * independent - independent, 0.0)  # C + excess
    use = np.ones(n_params, dtype=bool)
    plain = [tempering_factor(np.sqrt(v), np.ones(n_params), d, use) for v, d in zip(variance_jackknife, dof)]
    tested = [tempering_factor(np.sqrt(v), np.ones(n_params), d, use, r) for v, d, r in zip(variance_jackknife, dof, ratio)]
    assert np.mean(np.asarray(plain) > 1.3) > 0.15
    assert np.mean(np.asarray(tested) > 1.0) < 0.02  # the median of three needs two significant excesses
    counted = significant_excess(ratio, dof)
    assert np.mean(counted) == pytest.approx(EXCESS_SIGNIFICANCE, abs=0.01)


def test_a_frame_shared_excess_still_tempers():
    std_model = np.ones(3)
    std_jackknife = np.full(3, 4.5)  # speckle data: variance ratio about 20, replicates 9 times v_ind
    dof = np.full(3, 4.0)
    use = np.ones(3, dtype=bool)
    expected = 1.0 + (4.5**2 - 1.0) * t_widening(4.0)
    assert tempering_factor(std_jackknife, std_model, dof, use, np.full(3, 9.0)) == pytest.approx(expected)
    assert tempering_factor(std_jackknife, std_model, dof, use, np.full(3, 1.5)) == 1.0
