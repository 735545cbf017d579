"""Rules of ``evaluate/stats.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded."""

import numpy as np
import pytest

from middo.evaluate.stats import _percentiles, bootstrap_average, bootstrap_delta, intervals, mcnemar_exact, wilson


@pytest.mark.parametrize("n", [3, 6, 7, 10, 13])
def test_wilson_ends_are_exact_at_none_and_all_correct(n):
    """At 0/n and n/n the formula is off by one rounding step (5.6e-17 at 0/3, 0.9999999999999999 at 10/10); the
    interval must still reach exactly 0 and 1, or a report prints 1.0 as the high end of a perfect score's 0.99..."""
    assert wilson(0, n)[0] == 0.0
    assert wilson(n, n)[1] == 1.0


def test_wilson_with_one_item_is_an_interval_not_a_shrug():
    """Only n = 0 says nothing; one item already moves the interval (Newcombe's method 3 at 1/1 and 0/1)."""
    assert wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)
    assert wilson(0, 1) == pytest.approx((0.0, 0.7935), abs=1e-4)


def test_percentiles_cut_half_the_rest_from_each_tail():
    assert _percentiles(np.arange(101.0), 0.95) == pytest.approx((2.5, 97.5), rel=1e-12)
    assert _percentiles(np.arange(101.0), 0.5) == pytest.approx((25.0, 75.0), rel=1e-12)


@pytest.mark.parametrize(("fixed", "broken"), [(1, 1), (3, 3), (2, 3)])
def test_mcnemar_p_value_is_capped_at_one(fixed, broken):
    """Equal or nearly equal discordant counts double a tail that is over one half; a p-value stays <= 1."""
    assert mcnemar_exact(fixed, broken) == 1.0


def test_suites_without_items_are_left_out_of_the_average():
    """An empty suite has no mean; it neither counts as 0 nor breaks the bootstrap."""
    assert bootstrap_average({"a": [1, 1], "empty": []}, 100, 0) == (1.0, 1.0)
    assert bootstrap_average({"empty": []}, 100, 0) == (0.0, 1.0)
    assert bootstrap_average({}, 100, 0) == (0.0, 1.0)


def test_the_level_sets_the_width():
    scores = {"a": [1, 0] * 10}
    wide, narrow = bootstrap_average(scores, 2000, 0), bootstrap_average(scores, 2000, 0, level=0.5)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_bootstrap_delta_is_b_minus_a_per_suite_and_averaged_over_suites():
    """Known differences without spread: every item fixed in one suite (+1), nothing changed in the other (0)."""
    a = {"s": [0, 0, 0], "t": [1, 1]}
    b = {"s": [1, 1, 1], "t": [1, 1]}
    per_suite, average = bootstrap_delta(a, b, 50, 0)
    assert per_suite == {"s": (1.0, 1.0), "t": (0.0, 0.0)}
    assert average == (0.5, 0.5)
    assert bootstrap_delta(b, a, 50, 0)[1] == (-0.5, -0.5)


def test_bootstrap_delta_is_seeded_and_has_a_spread_where_items_disagree():
    a = {"s": [1, 0, 1, 0, 1, 0, 1, 0, 0, 0]}
    b = {"s": [1, 1, 1, 1, 0, 0, 1, 1, 0, 1]}  # 4 fixed, 1 broken: +0.3
    first = bootstrap_delta(a, b, 500, 3)
    assert bootstrap_delta(a, b, 500, 3) == first
    assert bootstrap_delta(a, b, 500, 4) != first
    low, high = first[1]
    assert low < 0.3 < high and first[0]["s"] == first[1]  # one suite: its interval is the average's


def test_bootstrap_delta_refuses_what_it_cannot_pair():
    """The message names the function (it is raised deep inside a comparison report)."""
    with pytest.raises(ValueError, match=r"^bootstrap_delta: no suites$"):
        bootstrap_delta({}, {}, 10, 0)
    same = r"^bootstrap_delta: a and b must hold the same non-empty suites, item for item$"
    with pytest.raises(ValueError, match=same):
        bootstrap_delta({"s": []}, {"s": []}, 10, 0)
    with pytest.raises(ValueError, match=same):
        bootstrap_delta({"s": [1]}, {"t": [1]}, 10, 0)


def test_intervals_round_to_four_places_and_average_over_suites():
    correct = {"a": [True, False, True], "b": [True, False, True, True, False, True, True]}
    out = intervals(correct, 200, 0)
    assert out["a"] == {"low": 0.2077, "high": 0.9385}  # wilson(2, 3) = (0.20765..., 0.93849...)
    assert out["b"] == {"low": 0.3589, "high": 0.9178}  # wilson(5, 7)
    lo, hi = bootstrap_average({s: [float(f) for f in v] for s, v in correct.items()}, 200, 0)  # the same draws
    assert (lo, hi) == (0.30952380952380953, 0.9285714285714286)  # more than 4 places: rounding is visible
    assert out["average"] == {"low": 0.3095, "high": 0.9286}
    assert intervals(correct, 200, 1)["average"] != out["average"]  # the seed is passed on
