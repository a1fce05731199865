"""Pure rules of CMC: shard counts, shard contents, dispatch order, sample counts, chains."""

from __future__ import annotations

import numpy as np
import pytest

from homodyne_mpi.cmc.sampler import chain_method_for
from homodyne_mpi.cmc.sharding import (
    AUTO_MAX_POINTS_PER_SHARD,
    REFERENCE_SHARD_POINTS,
    adapted_counts,
    assign_shards,
    dispatch_order,
    shard_count,
)


def angles(counts):
    return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def test_auto_shard_count_follows_the_documented_rule():
    # 20,000 points per shard at most, at least 200 points x 8 parameters
    assert shard_count(100_000, 8) == 5
    assert shard_count(100_001, 8) == 6
    assert shard_count(10_000, 8) == 1
    # the minimum wins over the maximum: 47 parameters x 200 = 9,400 points
    assert shard_count(1_000_000, 47) == 50
    assert shard_count(1_000_000, 200) == 1_000_000 // 40_000
    # a configured maximum, bounded by the minimum
    assert shard_count(100_000, 8, max_points_per_shard=10_000) == 10
    assert shard_count(100_000, 8, max_points_per_shard=100) == 100_000 // 1_600
    assert shard_count(1_000, 8) == 1
    assert AUTO_MAX_POINTS_PER_SHARD == 20_000


def test_configured_shard_count_is_used_as_given(caplog):
    assert shard_count(100_000, 8, num_shards=7) == 7
    with caplog.at_level("WARNING"):
        assert shard_count(10_000, 8, num_shards=16) == 16
    assert "below the minimum" in caplog.text
    assert shard_count(5, 8, num_shards=16) == 5
    with pytest.raises(ValueError):
        shard_count(0, 8)


@pytest.mark.parametrize("strategy", ["stratified", "random"])
def test_shards_partition_the_points_and_hold_every_angle_in_proportion(strategy):
    counts = [1001, 998, 1500, 7]
    angle = angles(counts)
    n_shards = 7
    shards = assign_shards(angle, n_shards, strategy=strategy, seed=11)
    assert len(shards) == n_shards
    joined = np.concatenate(shards)
    assert np.array_equal(np.sort(joined), np.arange(angle.size))
    for s in shards:
        assert np.all(np.diff(s) > 0)  # sorted, original order kept
    sizes = np.array([len(s) for s in shards])
    if strategy == "stratified":
        assert sizes.max() - sizes.min() <= 1
        for a, n_a in enumerate(counts):
            per_shard = np.array([np.sum(angle[s] == a) for s in shards])
            assert np.all(np.abs(per_shard - n_a / n_shards) < 1)
    else:
        assert sizes.max() - sizes.min() <= 1
        for s in shards:
            assert set(np.unique(angle[s])) == set(range(len(counts)))


def test_sharding_is_seeded():
    angle = angles([500, 500, 500])
    first = assign_shards(angle, 4, seed=3)
    again = assign_shards(angle, 4, seed=3)
    other = assign_shards(angle, 4, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_random_shards_fall_back_when_an_angle_would_be_missing(caplog):
    angle = angles([1000, 3])  # 3 points of angle 1 cannot reach 8 random shards
    with caplog.at_level("WARNING"):
        shards = assign_shards(angle, 8, strategy="random", seed=0)
    assert "stratified" in caplog.text
    assert sum(len(s) for s in shards) == angle.size


def test_dispatch_order_is_largest_first_then_by_index():
    assert dispatch_order([5, 7, 7, 3, 9]) == [4, 1, 2, 0, 3]
    assert dispatch_order([4, 4, 4]) == [0, 1, 2]
    assert dispatch_order([]) == []


def test_small_shards_keep_the_full_warm_up_and_scale_only_the_samples():
    kw = dict(num_warmup=500, num_samples=1000, min_samples=300)
    assert adapted_counts(REFERENCE_SHARD_POINTS, **kw) == (500, 1000)
    assert adapted_counts(10 * REFERENCE_SHARD_POINTS, **kw) == (500, 1000)
    assert adapted_counts(REFERENCE_SHARD_POINTS // 2, **kw) == (500, 500)
    assert adapted_counts(1_000, **kw) == (500, 300)
    # a minimum above the configured count does not raise it
    assert adapted_counts(1_000, num_warmup=50, num_samples=80, min_samples=300) == (50, 80)


def test_the_automatic_shard_count_gives_every_rank_a_shard():
    # issue 13: 14,850 points, 8 sampled parameters, 2 ranks became one shard
    assert shard_count(14_850, 8) == 1
    assert shard_count(14_850, 8, n_ranks=2) == 2
    assert shard_count(14_850, 8, n_ranks=4) == 4
    # never below the per-parameter minimum: 3,000 points hold one shard of 1,600
    assert shard_count(3_000, 8, n_ranks=2) == 1
    # a configured count is used as given
    assert shard_count(14_850, 8, num_shards=1, n_ranks=2) == 1


def test_chain_method_falls_back_to_sequential():
    assert chain_method_for("parallel", 4, 10_000, 4) == ("parallel", None)
    assert chain_method_for("parallel", 4, 250, 4) == ("parallel", None)
    method, reason = chain_method_for("parallel", 4, 249, 4)
    assert method == "sequential" and "250" in reason
    method, reason = chain_method_for("parallel", 4, 10_000, 2)
    assert method == "sequential" and "device" in reason
    assert chain_method_for("sequential", 4, 10_000, 4) == ("sequential", None)
    assert chain_method_for("parallel", 1, 10_000, 1) == ("sequential", None)
    with pytest.raises(ValueError):
        chain_method_for("vectorized", 4, 10_000, 4)
