"""How much a benchmark number says: 95% intervals for an accuracy, for the average over suites, and for the
difference between two evaluations of the same items.

A round's accuracy on 4 items moves in steps of 0.25; without an interval a reader takes that step for a result.
Each suite is a proportion of ``n`` items, so its interval is Wilson's score interval (it stays inside [0, 1] and is
sensible at 0/n and n/n, where the normal approximation collapses to a point). The average over suites is a mean of
proportions with different ``n``; its interval comes from a seeded bootstrap that resamples items within each suite.
Two evaluations of the same items are compared pairwise (:func:`bootstrap_delta`, :func:`mcnemar_exact`): the items
both got right or both got wrong carry no information about the difference, so a paired test is far sharper than
two overlapping intervals. This module only measures; :mod:`middo.evaluate.compare` decides what is noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n`` (``(0.0, 1.0)`` when ``n`` is 0: no information).

    Wilson (1927); Newcombe (1998), method 3: 0/4 -> [0, 0.490], 2/4 -> [0.150, 0.850], 50/100 -> [0.404, 0.596].
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct <= 0 else max(0.0, centre - half)  # exact ends: no rounding error at 0/n and n/n
    return low, 1.0 if correct >= n else min(1.0, centre + half)


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap means of ``values``, drawn as multinomial counts over the distinct values.

    Resampling n items with replacement gives each distinct value a Multinomial(n, share) count, so this is the
    ordinary bootstrap's distribution at O(resamples x distinct values) memory instead of O(resamples x n): per-item
    scores are 0/1 (or -1/0/1 for a paired difference), and a 14k-item suite would otherwise need a 14M index array.
    """
    distinct, counts = np.unique(values, return_counts=True)
    draws = rng.multinomial(len(values), counts / len(values), size=resamples)
    return draws @ distinct / len(values)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_average(
    scores: Mapping[str, Sequence[float]], resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over suites of each suite's mean item score.

    Items are resampled within each suite (suites keep their sizes), so a 4-item suite contributes its full
    uncertainty to the average instead of being averaged away.
    """
    rng = np.random.default_rng(seed)
    suites = [np.asarray(v, dtype=float) for v in scores.values() if len(v)]
    if not suites:
        return 0.0, 1.0
    means = sum(_resampled_means(values, resamples, rng) for values in suites) / len(suites)
    return _percentiles(means, level)


def bootstrap_delta(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Paired percentile bootstrap of ``mean(b) - mean(a)`` per suite and for the average over suites.

    ``a[suite][i]`` and ``b[suite][i]`` are the same item's scores; an item is resampled as a pair, so what the two
    evaluations have in common cancels. The average's interval uses the same draws as the suites'.

    Returns:
        ``({suite: (low, high)}, (low, high) of the average)``.

    Raises:
        ValueError: the two sides do not list the same suites with the same number of items, or a suite is empty.
    """
    if list(a) != list(b) or any(len(a[s]) != len(b[s]) or not len(a[s]) for s in a):
        raise ValueError("bootstrap_delta: a and b must hold the same non-empty suites, item for item")
    if not a:
        raise ValueError("bootstrap_delta: no suites")
    rng = np.random.default_rng(seed)
    means = {
        s: _resampled_means(np.asarray(b[s], dtype=float) - np.asarray(a[s], dtype=float), resamples, rng) for s in a
    }
    average = sum(means.values()) / len(means)
    return {s: _percentiles(m, level) for s, m in means.items()}, _percentiles(average, level)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of ``fixed`` vs ``broken`` discordant pairs at p = 1/2.

    ``fixed`` counts items only the second evaluation got right, ``broken`` those only the first got right; under
    "no difference" each discordant item is a fair coin. ``p = min(1, 2 * P(X <= min(fixed, broken)))`` with
    X ~ Binomial(fixed + broken, 1/2), in exact integer arithmetic (1.0 with no discordant pairs).
    """
    n = fixed + broken
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0), then C(n, k) = C(n, k - 1) * (n - k + 1) / k
    for k in range(1, min(fixed, broken) + 1):
        term = term * (n - k + 1) // k
        tail += term
    return min(1.0, 2 * tail / 2**n)


def intervals(correct: Mapping[str, Sequence[bool]], resamples: int, seed: int) -> dict[str, dict[str, float]]:
    """``{suite: {"low", "high"}, "average": {"low", "high"}}`` from each suite's per-item correctness."""
    out = {}
    for suite, flags in correct.items():
        lo, hi = wilson(sum(bool(f) for f in flags), len(flags))
        out[suite] = {"low": round(lo, 4), "high": round(hi, 4)}
    lo, hi = bootstrap_average({s: [float(bool(f)) for f in v] for s, v in correct.items()}, resamples, seed)
    out["average"] = {"low": round(lo, 4), "high": round(hi, 4)}
    return out
