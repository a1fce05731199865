"""The CMC likelihood calibration: jackknife/model variance ratio widened by Student's t."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from homodyne_mpi.cmc.calibration import CREDIBLE_LEVEL, MIN_DOF, t_widening, tempering_factor
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
