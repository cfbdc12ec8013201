"""Confidence intervals and paired comparisons, checked against scipy's own routines."""

import numpy as np
import pytest
from scipy import stats

from analysis.stats import estimate, paired


@pytest.mark.parametrize("values", [[0.81, 0.83], [0.8, 0.82, 0.85], list(np.linspace(0, 1, 10))])
def test_estimate_is_the_t_interval(values):
    result = estimate(values)
    low, high = stats.t.interval(0.95, len(values) - 1, np.mean(values), stats.sem(values))
    assert result.mean == pytest.approx(np.mean(values))
    assert (result.low, result.high) == pytest.approx((low, high))
    assert result.std == pytest.approx(np.std(values, ddof=1))
    assert result.n == len(values)


def test_three_runs_give_4_3_standard_errors_each_side():
    result = estimate([1.0, 2.0, 3.0])  # mean 2, standard error 1/√3
    assert result.high - result.mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)


def test_one_or_no_value():
    assert estimate([]) is None
    one = estimate([0.5])
    assert (one.mean, one.low, one.high, one.n, one.std) == (0.5, None, None, 1, None)


def test_paired_comparison_is_scipys_paired_t_test():
    treatment, reference = [0.86, 0.87, 0.85, 0.88], [0.84, 0.86, 0.85, 0.85]
    result = paired(treatment, reference)
    expected = stats.ttest_rel(treatment, reference)
    interval = expected.confidence_interval(0.95)
    assert (result.difference.low, result.difference.high) == pytest.approx(
        (interval.low, interval.high)
    )
    assert result.p_value == pytest.approx(expected.pvalue)


def test_pairing_removes_the_spread_shared_by_both_runs_of_a_seed():
    # Seeds differ by up to 4 points, the trick adds 0.5 of a point to each: unpaired, a t-test
    # would see nothing.
    reference = np.array([0.80, 0.84, 0.82, 0.81, 0.83])
    noise = np.array([0.001, -0.001, 0, 0.0005, -0.0005])
    treatment = reference + 0.005 + noise
    assert stats.ttest_ind(treatment, reference).pvalue > 0.05
    assert paired(list(treatment), list(reference)).verdict == "helps"
    assert paired(list(reference - 0.01 + noise), list(reference)).verdict == "hurts"


@pytest.mark.parametrize(
    ("treatment", "reference", "verdict"),
    [
        ([0.9, 0.8, 0.85], [0.85, 0.85, 0.84], "no detectable difference"),
        ([0.9], [0.8], "not enough repeats"),
        ([0.8, 0.8], [0.8, 0.8], "not enough repeats"),
        # Two seeds, a clear effect that varies: the interval is above 0, but it rests on one
        # degree of freedom.
        ([0.91, 0.92], [0.81, 0.8201], "not enough repeats"),
    ],
)
def test_verdicts(treatment, reference, verdict):
    assert paired(treatment, reference).verdict == verdict


def test_two_seeds_give_an_interval_and_a_p_value_but_no_verdict():
    result = paired([0.91, 0.92], [0.81, 0.8201])
    expected = stats.ttest_rel([0.91, 0.92], [0.81, 0.8201])
    assert result.difference.low > 0
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.verdict == "not enough repeats"


# Test accuracies as stored, one point apart on every seed: their differences are 0.01 up to
# the float rounding of the subtraction (0.00999…9898 for some, 0.01…0009 for others).
BASE = [0.8134, 0.8836, 0.8433, 0.8231, 0.8600]
POINT_MORE = [0.8234, 0.8936, 0.8533, 0.8331, 0.8700]


@pytest.mark.parametrize(
    ("treatment", "reference", "effect"),
    [(POINT_MORE, BASE, 0.01), (BASE, POINT_MORE, -0.01), (BASE, BASE, 0.0)],
)
@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_the_same_difference_on_every_seed_is_no_spread_not_an_effect(
    treatment, reference, effect, seeds
):
    # The seeds' accuracies differ, the trick's difference does not: the interval has (almost)
    # zero width, and says nothing of the seeds' noise.
    result = paired(treatment[:seeds], reference[:seeds])
    assert result.difference.mean == pytest.approx(effect)
    assert result.difference.high - result.difference.low == pytest.approx(0, abs=1e-12)
    assert result.p_value is None
    assert result.verdict == ("not enough repeats" if seeds < 3 else "no spread")


def test_the_rounding_of_a_subtraction_is_not_a_spread():
    differences = np.subtract(POINT_MORE, BASE)
    assert np.std(differences, ddof=1) > 0  # what an exact test for zero would call a spread
    assert paired(POINT_MORE, BASE).verdict == "no spread"


def test_paired_lists_must_match():
    with pytest.raises(ValueError, match="equally long"):
        paired([0.1, 0.2], [0.1])
