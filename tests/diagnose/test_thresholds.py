import numpy as np
import pytest

from middo.diagnose.thresholds import flag_complexity, flag_diversity, flag_quality, threshold


def test_threshold_is_mean_plus_m_std():
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, population std sqrt(2)
    t = threshold(v, 1.5, "above")
    assert t.mean == 3.0
    assert t.std == pytest.approx(np.sqrt(2))
    assert t.value == pytest.approx(3 + 1.5 * np.sqrt(2))
    assert threshold(v, 1.0, "below").value == pytest.approx(3 - np.sqrt(2))


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
