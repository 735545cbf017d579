"""PNG plots people look at instead of reading numbers: score histograms with thresholds, metrics per round.

PNG rather than DVC's HTML plots alone, since the HTML loads vega from a CDN that offline users cannot reach.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from middo.dataio.atomic import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6, 3.5)) -> bytes:
    """Render ``draw(ax)`` on a fresh figure and return it as PNG bytes (the figure is closed: no leak per plot)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def histogram(values: np.ndarray, thresholds: dict[str, float], path: str | Path, title: str, xlabel: str) -> None:
    """Histogram of the finite ``values`` with a dashed vertical line per named threshold."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]

    def draw(ax):
        ax.hist(v, bins=min(40, max(5, len(v) // 4)), color="#4c72b0", alpha=0.85)
        for i, (name, x) in enumerate(thresholds.items()):
            if np.isfinite(x):
                color = ("#c44e52", "#dd8452", "#55a868")[i % 3]
                ax.axvline(x, color=color, linestyle="--", label=f"{name} = {x:.3g}")
        ax.set_title(f"{title} (n={len(v)})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        if thresholds:
            ax.legend(fontsize=8)

    atomic_write_bytes(path, figure_png(draw))
