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
