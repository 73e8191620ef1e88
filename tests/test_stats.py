import math

import pytest

from corll.stats import paired_comparison, t_interval


def test_t_interval_matches_the_textbook_value():
    # mean 2, sample sd 1, n 3: half width = t(0.975, 2) · 1/√3 = 4.302653 / 1.732051 = 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0
    assert interval.half_width == pytest.approx(2.484138, abs=1e-5)
    assert (interval.low, interval.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)


def test_t_interval_of_one_value_has_no_width_and_of_none_is_an_error():
    assert t_interval([0.5]).half_width == 0
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_paired_comparison_uses_per_seed_differences():
    a, b = [1.0, 2.0, 3.0], [0.5, 1.0, 2.5]  # differences 0.5, 1.0, 0.5: mean 2/3, sd 0.288675
    result = paired_comparison(a, b)
    assert result.difference.mean == pytest.approx(2 / 3)
    t = (2 / 3) / (0.288675 / math.sqrt(3))  # 4.0
    assert t == pytest.approx(4.0, abs=1e-4)
    assert result.p_value == pytest.approx(0.0572, abs=1e-3)  # two-sided, 2 degrees of freedom
    with pytest.raises(ValueError, match="equal counts"):
        paired_comparison([1.0], [1.0, 2.0])


def test_wilson_interval_by_hand_and_at_zero():
    from corll.stats import wilson_interval

    low, high = wilson_interval(40, 1000)  # p = 0.04, z = 1.96: centre 0.04176, half-width 0.01225
    assert low == pytest.approx(0.02951, abs=5e-5) and high == pytest.approx(0.05401, abs=5e-5)
    low, high = wilson_interval(0, 1000)  # no loves seen: the interval still reaches above 0
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.00383, abs=5e-5)
    with pytest.raises(ValueError):
        wilson_interval(5, 0)


def test_pearson_interval_is_fishers_z():
    import math

    from corll.stats import pearson_interval

    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    y = [1.2, 1.9, 3.5, 3.9, 5.2, 5.8, 7.5, 7.7]
    c = pearson_interval(x, y)
    half = 1.959964 / math.sqrt(8 - 3)
    assert c.low == pytest.approx(math.tanh(math.atanh(c.r) - half), abs=1e-6)
    assert c.high == pytest.approx(math.tanh(math.atanh(c.r) + half), abs=1e-6)
    assert c.low < c.r < c.high < 1 and c.p_value < 0.001 and c.n == 8
    with pytest.raises(ValueError, match="at least 4 pairs"):
        pearson_interval(x[:3], y[:3])


@pytest.mark.parametrize("n", [3, 4, 8])
def test_the_minimum_detectable_effect_is_exact_checked_by_simulating_the_t_test(n):
    """At the stated effect, simulated paired t-tests reject 80% of the time; the textbook shortcut's effect
    is smaller by 5% at 3 pairs and 2% at 4, and would claim a power these designs do not have."""
    import numpy as np
    from scipy import stats

    from corll.stats import minimum_detectable_effect, t_test_power

    effect = minimum_detectable_effect(2.0, n)  # sd 2
    rng = np.random.default_rng(0)
    draws = rng.normal(effect, 2.0, size=(200_000, n))
    t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(n))
    rejected = np.abs(t) > stats.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.80, abs=0.004)
    shortcut = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * 2.0 / math.sqrt(n)
    assert effect / shortcut - 1 == pytest.approx({3: 0.054, 4: 0.023, 8: 0.003}[n], abs=0.002)
    assert t_test_power(shortcut, 2.0, n) < 0.8
