"""Intervals over seeds and paired comparisons, for experiment aggregates.

With 3–5 seeds a bootstrap interval is too narrow; the Student-t interval is the
honest choice and is what we report. Paired comparisons pair runs by seed: two
arms run with the same seed see the same prompts in the same order and are
evaluated on the same held-out samples' seed, so per-seed differences remove the
shared noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval (low = high = mean for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean."""
    if not values:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 1)
    half = scipy_stats.t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


@dataclass(frozen=True)
class PairedComparison:
    """a − b paired by seed: the mean difference, its t interval and a two-sided paired t-test p-value."""

    difference: Interval
    p_value: float


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    interval = t_interval(differences, confidence)
    if len(differences) < 2 or statistics.stdev(differences) == 0:
        p = math.nan if len(differences) < 2 else (0.0 if interval.mean != 0 else 1.0)
    else:
        p = float(scipy_stats.ttest_rel(a, b).pvalue)
    return PairedComparison(interval, p)


@dataclass(frozen=True)
class Correlation:
    """Pearson r over n pairs, its 95% interval by Fisher's z, and the two-sided p of r = 0."""

    r: float
    low: float
    high: float
    p_value: float
    n: int


def pearson_interval(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Correlation:
    if len(x) != len(y) or len(x) < 4:
        raise ValueError(f"a correlation interval needs at least 4 pairs of equal length, got {len(x)} and {len(y)}")
    found = scipy_stats.pearsonr(x, y)
    z = math.atanh(max(min(found.statistic, 1 - 1e-12), -1 + 1e-12))
    half = scipy_stats.norm.ppf((1 + confidence) / 2) / math.sqrt(len(x) - 3)
    return Correlation(found.statistic, math.tanh(z - half), math.tanh(z + half), found.pvalue, len(x))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a binomial rate: honest near 0, where love rates live."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a rate needs 0 ≤ successes ≤ n and n > 0, got {successes} of {n}")
    z = scipy_stats.norm.ppf((1 + confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
