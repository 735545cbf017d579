import numpy as np
import pytest

from middo.diagnose.thresholds import DDOF, flag_complexity, flag_diversity, flag_quality, threshold

V = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3; population std sqrt(2), sample std sqrt(2.5)


def test_threshold_is_mean_plus_m_std():
    t = threshold(V, 1.5, "above")
    assert t.mean == 3.0
    assert t.std == pytest.approx(np.sqrt(2))
    assert t.value == pytest.approx(3 + 1.5 * np.sqrt(2))
    assert threshold(V, 1.0, "below").value == pytest.approx(3 - np.sqrt(2))
    assert threshold(V, 1.0, "below", ddof=1).value == pytest.approx(3 - np.sqrt(2.5))


def test_std_per_signal_matches_its_reference_script():
    """complexity_filter.py and diversity_filter.py call numpy.std (ddof 0); quality_filter.py statistics.stdev."""
    assert DDOF == {"complexity": 0, "diversity": 0, "quality": 1}
    _, t = flag_complexity(V, V, 1.0)
    assert t["loss_base"].std == pytest.approx(np.sqrt(2)) and t["loss_current"].std == pytest.approx(np.sqrt(2))
    _, t = flag_diversity(V, 1.0)
    assert t["knn_sim"].std == pytest.approx(np.sqrt(2))
    _, t = flag_quality(V, 1.0)
    assert t["quality"].std == pytest.approx(np.sqrt(2.5))


def test_quality_sample_std_changes_the_decision():
    # mean 5.0625: mean - population std = 3.553 would flag 3.5; mean - sample std = 3.449 does not
    q = np.array([3.5, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 8.0])
    assert threshold(q, 1.0, "below", ddof=0).value == pytest.approx(3.5534, abs=1e-4)
    assert flag_diversity(q, 1.0)[0].tolist() == [True] + [False] * 7  # same numbers, population std
    flags, t = flag_quality(q, 1.0)
    assert t["quality"].value == pytest.approx(3.4492, abs=1e-4)
    assert not flags.any()


def test_single_value_with_sample_std_has_zero_std():
    t = threshold(np.array([4.0, np.nan]), 1.0, "below", ddof=1)
    assert (t.mean, t.std, t.value) == (4.0, 0.0, 4.0)


def test_complexity_needs_both_losses_high():
    base = np.array([1.0, 1.0, 1.0, 1.0, 9.0, 9.0])
    cur = np.array([1.0, 1.0, 1.0, 1.0, 9.0, 1.0])
    flags, t = flag_complexity(base, cur, 0.5)
    assert flags.tolist() == [False, False, False, False, True, False]
    assert t["loss_base"].value == pytest.approx(base.mean() + 0.5 * base.std())


def test_low_signals_flag_below():
    sims = np.array([0.9, 0.91, 0.89, 0.9, 0.2])
    flags, _ = flag_diversity(sims, 1.0)
    assert flags.tolist() == [False, False, False, False, True]
    q = np.array([8.0, 7.0, 8.0, 1.0, np.nan])
    flags, t = flag_quality(q, 1.0)
    assert flags.tolist() == [False, False, False, True, False]  # NaN never flags...
    assert t["quality"].mean == pytest.approx(6.0)  # ...and does not move the threshold


def test_m_zero_flags_everything_beyond_the_mean():
    v = np.array([1.0, 2.0, 3.0])
    flags, _ = flag_quality(v, 0.0)
    assert flags.tolist() == [True, False, False]
