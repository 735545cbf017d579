"""Which samples go to the teacher: the diagnosis's flags (Middo), or the same number drawn at random (the control).

A Middo gain only means something against the same intervention applied blindly: the random control sends as many
samples per axis as the diagnosis flagged, through the same teacher, prompts, validation and merge, so the only
difference left between the two experiments is *which* samples were chosen.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

SELECTIONS = ("model", "random")


def random_like(flags: Mapping[str, set[str]], ids: Sequence[str], seed: int, round_: int) -> dict[str, set[str]]:
    """Per axis, ``len(flags[axis])`` ids drawn without replacement from ``ids``.

    Each axis draws independently (as the diagnosis's axes flag independently), seeded by ``(seed, round, axis)``:
    the same params give the same draw, and rounds and axes do not share one.
    """
    pool = sorted(ids)
    out = {}
    for axis, flagged in flags.items():
        rng = random.Random(f"{seed}:{round_}:{axis}")
        out[axis] = set(rng.sample(pool, min(len(flagged), len(pool))))
    return out


def select(
    flags: Mapping[str, set[str]], ids: Sequence[str], selection: str, seed: int, round_: int
) -> dict[str, set[str]]:
    """The ids each axis refines under ``selection`` (``model``: the flags themselves).

    Raises:
        ValueError: an unknown selection.
    """
    if selection == "model":
        return {axis: set(v) for axis, v in flags.items()}
    if selection == "random":
        return random_like(flags, ids, seed, round_)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
