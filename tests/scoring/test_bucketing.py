import numpy as np
import pytest

from aligngpt.scoring.bucketing import assign_levels, level_sizes


@pytest.mark.parametrize(("m", "n"), [(16, 8), (17, 8), (23, 8), (5, 3), (3, 8), (1, 1), (100, 7)])
def test_levels_are_equal_count_and_monotone(m, n):
    scores = np.random.default_rng(m * 31 + n).normal(size=m)
    levels = assign_levels(scores, n)
    counts = np.bincount(levels, minlength=n)
    assert counts.tolist() == level_sizes(m, n)
    assert counts.max() - counts.min() <= 1
    assert levels.min() >= 0 and levels.max() <= n - 1
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(levels[order]) >= 0)  # higher score never gets a lower level


def test_level_sizes_rule_for_uneven_split():
    assert level_sizes(10, 4) == [3, 2, 3, 2]  # ceil((k+1)M/N) - ceil(kM/N): larger levels spread out
    assert sum(level_sizes(558_128, 8)) == 558_128


def test_ties_are_broken_by_record_order():
    levels = assign_levels([0.5] * 8, 4)
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_lowest_score_is_level_zero_highest_is_top():
    levels = assign_levels([0.9, 0.1, 0.5, 0.3], 4)
    assert levels.tolist() == [3, 0, 2, 1]


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="position 1"):
        assign_levels([0.1, float("nan")], 2)
    with pytest.raises(ValueError):
        assign_levels([0.1], 0)
