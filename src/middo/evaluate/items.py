"""What every suite does with its items: pick a reproducible subset, and turn per-item results into a score.

Rounds are compared with each other, so round 3 must see exactly the items round 1 saw: the subset is a seeded
shuffle of the whole set, cut at ``limit``, and it does not depend on anything but (set, limit, seed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def select_items(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """The first ``limit`` items of a seeded shuffle (all of them, shuffled, when ``limit`` is None or <= 0).

    A shuffle rather than the head of the file, because benchmark files are often sorted by difficulty or source.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if limit is not None and limit > 0:
        order = order[:limit]
    return [items[i] for i in order]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"accuracy", "n", "results"}`` from per-item results that each carry a boolean ``correct``."""
    n = len(results)
    return {"accuracy": sum(bool(r["correct"]) for r in results) / n if n else 0.0, "n": n, "results": results}
