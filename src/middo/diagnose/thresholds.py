"""Deciding, separate from measuring: flags from mean ± m·std of each signal's own distribution.

Pure functions over arrays so they can be tested on hand-made numbers. NaN values (unscored samples) never flag and
do not move the threshold. Each signal uses the std its reference script computes: complexity and diversity call
``numpy.std`` (population std, ddof=0), quality calls ``statistics.stdev`` (sample std, ddof=1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DDOF = {"complexity": 0, "diversity": 0, "quality": 1}


@dataclass(frozen=True)
class Threshold:
    mean: float
    std: float
    m: float
    value: float
    direction: str  # "above" flags values > value, "below" flags values < value


def threshold(values: np.ndarray, m: float, direction: str, ddof: int = 0) -> Threshold:
    """mean + m·std (``above``) or mean − m·std (``below``) over the finite values.

    Args:
        values: one signal, NaN where unscored.
        m: how many stds from the mean.
        direction: ``above`` or ``below``.
        ddof: delta degrees of freedom of the std (0: population, 1: sample). With no more than ``ddof`` finite
            values the std is taken as 0 (the reference quality script does so for a single value).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Threshold(float("nan"), float("nan"), m, float("nan"), direction)
    mean = float(v.mean())
    std = float(v.std(ddof=ddof)) if v.size > ddof else 0.0
    value = mean + m * std if direction == "above" else mean - m * std
    return Threshold(mean, std, m, value, direction)


def flag(values: np.ndarray, t: Threshold) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = v > t.value if t.direction == "above" else v < t.value
    return out & np.isfinite(v)


def flag_complexity(loss_base: np.ndarray, loss_current: np.ndarray, m: float):
    """Too hard = loss above its threshold under *both* the base and the fine-tuned model."""
    ddof = DDOF["complexity"]
    tb, tc = threshold(loss_base, m, "above", ddof), threshold(loss_current, m, "above", ddof)
    return flag(loss_base, tb) & flag(loss_current, tc), {"loss_base": tb, "loss_current": tc}


def flag_diversity(knn_sim: np.ndarray, m: float):
    """Sparse region = average similarity to the k nearest neighbours below its threshold."""
    t = threshold(knn_sim, m, "below", DDOF["diversity"])
    return flag(knn_sim, t), {"knn_sim": t}


def flag_quality(score: np.ndarray, m: float):
    """Poor = mean judged quality below its threshold."""
    t = threshold(score, m, "below", DDOF["quality"])
    return flag(score, t), {"quality": t}
