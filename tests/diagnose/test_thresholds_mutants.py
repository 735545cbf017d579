"""Rules of ``diagnose/thresholds.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded."""

import math

import numpy as np

from middo.diagnose.thresholds import flag, flag_complexity, flag_diversity, flag_quality, threshold


def test_a_signal_with_no_finite_value_has_a_nan_threshold_that_flags_nothing():
    """A round where nothing was scored (every judge reply lost): no threshold exists, so nothing is flagged."""
    t = threshold(np.array([np.nan, np.nan]), 1.5, "below", ddof=1)
    assert math.isnan(t.mean) and math.isnan(t.std) and math.isnan(t.value)
    assert (t.m, t.direction) == (1.5, "below")
    assert flag(np.array([np.nan, np.nan]), t).tolist() == [False, False]
    assert flag(np.array([1.0, 9.0]), t).tolist() == [False, False]  # no threshold to be below or above


def test_each_signal_records_its_m_and_direction():
    """The report prints these fields; complexity flags high losses, diversity and quality low values."""
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    _, t = flag_complexity(v, v, 0.5)
    assert [(x.m, x.direction) for x in t.values()] == [(0.5, "above"), (0.5, "above")]
    _, t = flag_diversity(v, 0.7)
    assert (t["knn_sim"].m, t["knn_sim"].direction) == (0.7, "below")
    _, t = flag_quality(v, 0.9)
    assert (t["quality"].m, t["quality"].direction) == (0.9, "below")


def test_a_value_exactly_on_the_threshold_is_not_flagged():
    """Identical losses (std 0, threshold = the value itself): no sample stands out, so none is too hard."""
    same = np.full(4, 2.5)
    flags, t = flag_complexity(same, same, 1.0)
    assert t["loss_base"].value == 2.5 and not flags.any()
    assert not flag_diversity(same, 1.0)[0].any() and not flag_quality(same, 1.0)[0].any()


def test_a_missing_score_read_back_as_none_counts_as_nan():
    """A JSON null (an unscored sample in a table read back) neither flags nor moves the threshold."""
    values = [1.0, None, 3.0]
    t = threshold(values, 0.0, "above")
    assert (t.mean, t.value) == (2.0, 2.0)
    assert flag(values, t).tolist() == [False, False, True]
