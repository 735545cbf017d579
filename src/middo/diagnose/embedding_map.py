"""Where the samples sit in prompt-embedding space: a 2-D map with the sparse ones and the teacher's new ones marked.

The paper tells its diversity story as embedding-cluster dynamics; a histogram of kNN similarity cannot show it.
The map projects the prompt embeddings diagnose already computed (the ones kNN used) onto their first two principal
components. PCA rather than t-SNE/UMAP: it is deterministic, needs no new dependency, and keeps distances between
rounds' maps comparable in kind (a linear view, not a learned layout that reshuffles every run).

Samples a previous round's diversify step wrote carry ``op == "diversify"`` in their lineage, so round R's map shows
both this round's sparse flags and where last round's new samples landed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from middo.dataio.atomic import atomic_write_bytes, atomic_write_text
from middo.plots import figure_png

# how a point is drawn, by what it is; order = drawing order (later on top)
KINDS = {
    "sample": {"color": "#9aa5b1", "marker": "o", "size": 14, "label": "sample"},
    "simplify": {"color": "#dd8452", "marker": "s", "size": 22, "label": "made by simplify"},
    "improve": {"color": "#55a868", "marker": "D", "size": 20, "label": "made by improve"},
    "diversify": {"color": "#4c72b0", "marker": "^", "size": 30, "label": "made by diversify"},
}


def project(embeddings: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """First two principal components of the L2-normalised embeddings (cosine geometry, as kNN) and the share of
    variance each explains. Deterministic: a full SVD with sklearn's sign convention."""
    from sklearn.decomposition import PCA

    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    pca = PCA(n_components=2, svd_solver="full")
    xy = pca.fit_transform(x)
    return xy, [float(v) for v in pca.explained_variance_ratio_]


def map_rows(ids: Sequence[str], ops: Sequence[str], sparse: np.ndarray, xy: np.ndarray) -> list[dict]:
    """One row per sample for ``dvc plots`` and the PNG: position, whether it was flagged sparse, what made it."""
    return [
        {
            "id": rid,
            "x": round(float(p[0]), 5),
            "y": round(float(p[1]), 5),
            "kind": op if op in KINDS else "sample",
            "sparse": bool(s),
        }
        for rid, op, s, p in zip(ids, ops, sparse, xy, strict=True)
    ]


def _png(rows: list[dict], variance: list[float], title: str) -> bytes:
    def draw(ax):
        for kind, style in KINDS.items():
            pts = [r for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter(
                    [r["x"] for r in pts],
                    [r["y"] for r in pts],
                    s=style["size"],
                    c=style["color"],
                    marker=style["marker"],
                    label=f"{style['label']} ({len(pts)})",
                    alpha=0.8,
                    linewidths=0,
                )
        sparse = [r for r in rows if r["sparse"]]
        if sparse:
            ax.scatter(
                [r["x"] for r in sparse],
                [r["y"] for r in sparse],
                s=70,
                facecolors="none",
                edgecolors="#c44e52",
                linewidths=1.4,
                label=f"flagged sparse ({len(sparse)})",
            )
        ax.set_xlabel(f"PC1 ({variance[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({variance[1]:.0%} of variance)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")

    return figure_png(draw, size=(6, 5))


def write_embedding_map(
    embeddings: np.ndarray,
    ids: Sequence[str],
    ops: Sequence[str],
    sparse: np.ndarray,
    out_dir: str | Path,
    title: str,
) -> dict:
    """Write ``embeddings.npy`` (float16: the vectors at half the bytes, enough for maps and neighbours),
    ``embedding_map.json`` (plot data) and ``embedding_map.png`` into ``out_dir``; returns the variance shares."""
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.save(buf, np.asarray(embeddings, dtype=np.float16), allow_pickle=False)
    atomic_write_bytes(out_dir / "embeddings.npy", buf.getvalue())
    xy, variance = project(embeddings)
    rows = map_rows(ids, ops, sparse, xy)
    atomic_write_text(out_dir / "embedding_map.json", json.dumps(rows, indent=0) + "\n")
    atomic_write_bytes(out_dir / "embedding_map.png", _png(rows, variance, title))
    return {"explained_variance": [round(v, 4) for v in variance]}
