"""PNG plots people look at instead of reading numbers: score histograms with thresholds, metrics per round.

PNG rather than DVC's HTML plots alone, since the HTML loads vega from a CDN that offline users cannot reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from middo.dataio.atomic import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram(values: np.ndarray, thresholds: dict[str, float], path: str | Path, title: str, xlabel: str) -> None:
    """Histogram of the finite ``values`` with a dashed vertical line per named threshold."""
    import io

    plt = _figure()
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(v, bins=min(40, max(5, len(v) // 4)), color="#4c72b0", alpha=0.85)
    for i, (name, x) in enumerate(thresholds.items()):
        if np.isfinite(x):
            ax.axvline(x, color=("#c44e52", "#dd8452", "#55a868")[i % 3], linestyle="--", label=f"{name} = {x:.3g}")
    ax.set_title(f"{title} (n={len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    if thresholds:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
