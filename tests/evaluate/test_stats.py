import math

import pytest

from middo.evaluate.stats import bootstrap_average, bootstrap_delta, intervals, mcnemar_exact, wilson


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        # Newcombe (1998), method 3; 0/n: [0, z^2 / (n + z^2)] = [0, 3.8415 / 7.8415]
        (0, 4, 0.0, 0.490),
        (2, 4, 0.150, 0.850),
        (4, 4, 0.510, 1.0),
        (50, 100, 0.404, 0.596),
        (1, 4, 0.046, 0.699),
    ],
)
def test_wilson_matches_the_literature(correct, n, low, high):
    lo, hi = wilson(correct, n)
    assert (round(lo, 3), round(hi, 3)) == (low, high)


def test_wilson_without_items_says_nothing():
    assert wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_average_is_seeded_and_holds_the_estimate():
    scores = {"a": [1, 0, 1, 1, 0, 0, 1, 0], "b": [0, 0, 0, 1], "c": [1] * 5 + [0] * 15}
    estimate = sum(sum(v) / len(v) for v in scores.values()) / 3
    lo, hi = bootstrap_average(scores, 1000, 7)
    assert bootstrap_average(scores, 1000, 7) == (lo, hi)
    assert bootstrap_average(scores, 1000, 8) != (lo, hi)
    assert 0.0 <= lo < estimate < hi <= 1.0
    assert bootstrap_average({"a": [1, 1, 1]}, 200, 0) == (1.0, 1.0)  # no spread, no interval


def test_bootstrap_equals_index_resampling_in_distribution():
    # the multinomial draw is the ordinary bootstrap: its interval for a 30% suite of 200 items matches the normal one
    lo, hi = bootstrap_average({"s": [1] * 60 + [0] * 140}, 20000, 1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 200)
    assert lo == pytest.approx(0.3 - half, abs=0.01) and hi == pytest.approx(0.3 + half, abs=0.01)


def test_intervals_shape():
    out = intervals({"gsm8k": [True, False, False, False], "hellaswag": [True, True]}, 500, 3)
    assert set(out) == {"gsm8k", "hellaswag", "average"}
    assert out["gsm8k"] == {"low": 0.0456, "high": 0.6994}
    assert out["average"]["low"] <= (0.25 + 1.0) / 2 <= out["average"]["high"]


def test_bootstrap_delta_is_paired():
    # B = A on every item: whatever A's spread, the paired difference has none
    a = {"s": [1, 0, 1, 0, 1, 0, 1, 0]}
    per_suite, average = bootstrap_delta(a, a, 500, 0)
    assert per_suite == {"s": (0.0, 0.0)} and average == (0.0, 0.0)
    with pytest.raises(ValueError, match="same non-empty suites"):
        bootstrap_delta(a, {"s": [1]}, 10, 0)


@pytest.mark.parametrize(
    ("fixed", "broken", "p"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),
        (3, 5, 0.7265625),  # 2 * (1 + 8 + 28 + 56) / 256
        (40, 0, 2 / 2**40),
        (0, 6, 0.03125),
    ],
)
def test_mcnemar_exact(fixed, broken, p):
    assert mcnemar_exact(fixed, broken) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for fixed, broken in [(7, 19), (120, 95), (1000, 1100)]:
        expected = stats.binomtest(fixed, fixed + broken, 0.5).pvalue
        assert mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-9)
