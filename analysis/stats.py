"""Means with 95% confidence intervals, and the paired comparison that gives a verdict.

Repeats are few (3 to 10 seeds), so intervals use Student's t distribution, not the normal
one: with 3 runs the half-width is 4.30 standard errors, not 1.96.

A verdict of helps or hurts needs at least MIN_REPEATS matched runs whose differences vary.
With 2 runs the interval rests on one degree of freedom, and the spread of two numbers says
little about the next seed; with differences equal on every run, the interval has zero width
whatever the seeds' noise, and would call any difference an effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_REPEATS = 3
# Differences this close (relative to the values compared) are equal: what is left is float
# rounding of the subtraction, not a spread between runs.
SPREAD_TOLERANCE = 1e-9
Verdict = Literal["helps", "hurts", "no detectable difference", "not enough repeats", "no spread"]


@dataclass(frozen=True)
class Estimate:
    """A mean over runs and its 95% confidence interval (None with fewer than 2 runs)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    std: float | None  # the sample standard deviation (n - 1 in the denominator)


def estimate(values: list[float] | np.ndarray) -> Estimate | None:
    """The mean of the values with its t interval; None when there are no values."""
    sample = np.asarray(values, dtype=np.float64)
    n = sample.size
    if n == 0:
        return None
    mean = float(sample.mean())
    if n < 2:
        return Estimate(mean, None, None, 1, None)
    std = float(sample.std(ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class Comparison:
    """treatment − reference, paired run by run (same seed), with the verdict it supports."""

    difference: Estimate | None
    p_value: float | None  # the paired t test's, two-sided
    verdict: Verdict


def paired(treatment: list[float], reference: list[float]) -> Comparison:
    """Compare two equally long lists of matched runs; higher is better. The difference and
    its interval are given from 2 runs on; the verdict says helps or hurts only from
    MIN_REPEATS runs whose differences are not all equal ("not enough repeats" below that,
    "no spread" when they are equal)."""
    if len(treatment) != len(reference):
        raise ValueError("paired runs: the two lists must be equally long")
    treated, referred = np.asarray(treatment, np.float64), np.asarray(reference, np.float64)
    differences = treated - referred
    difference = estimate(differences)
    if difference is None or difference.std is None:  # no std: fewer than 2 runs
        return Comparison(difference, None, "not enough repeats")
    assert difference.low is not None and difference.high is not None
    scale = max(1.0, float(np.abs(treated).max()), float(np.abs(referred).max()))
    spread = difference.std > SPREAD_TOLERANCE * scale
    p_value = None
    if spread:
        t = difference.mean / (difference.std / math.sqrt(difference.n))
        p_value = float(2 * stats.t.sf(abs(t), difference.n - 1))
    if difference.n < MIN_REPEATS:
        return Comparison(difference, p_value, "not enough repeats")
    if not spread:
        return Comparison(difference, p_value, "no spread")
    if difference.low > 0:
        return Comparison(difference, p_value, "helps")
    if difference.high < 0:
        return Comparison(difference, p_value, "hurts")
    return Comparison(difference, p_value, "no detectable difference")
