"""The embedding map: a deterministic 2-D PCA view of the prompt embeddings, sparse and teacher-made samples marked."""

import io
import json

import numpy as np
import pytest

from middo.diagnose.embedding_map import map_rows, project, write_embedding_map


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.05, (20, 16)) + np.eye(16)[0] * 3
    b = rng.normal(0, 0.05, (20, 16)) + np.eye(16)[1] * 3
    far = np.eye(16)[5:7] * 3  # two lone points: the sparse region
    return np.vstack([a, b, far]).astype(np.float32)


def test_projection_separates_clusters_and_is_deterministic():
    emb = _clusters()
    xy, variance = project(emb)
    again, _ = project(emb.copy())
    assert np.array_equal(xy, again)
    assert xy.shape == (42, 2) and 0 < variance[1] <= variance[0] <= 1
    ca, cb = xy[:20].mean(axis=0), xy[20:40].mean(axis=0)
    spread = max(np.linalg.norm(xy[:20] - ca, axis=1).max(), np.linalg.norm(xy[20:40] - cb, axis=1).max())
    assert np.linalg.norm(ca - cb) > 5 * spread  # the two clusters do not overlap on the map


def test_projection_uses_cosine_geometry():
    emb = _clusters()
    scaled = emb * np.linspace(0.5, 4, len(emb))[:, None].astype(np.float32)  # lengths change, directions do not
    assert np.allclose(project(emb)[0], project(scaled)[0], atol=1e-5)


def test_rows_mark_sparse_and_what_made_each_sample():
    xy = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    rows = map_rows(["a", "b", "c"], ["seed", "diversify", "improve"], np.array([True, False, False]), xy)
    assert rows == [
        {"id": "a", "x": 0.0, "y": 1.0, "kind": "sample", "sparse": True},
        {"id": "b", "x": 2.0, "y": 3.0, "kind": "diversify", "sparse": False},
        {"id": "c", "x": 4.0, "y": 5.0, "kind": "improve", "sparse": False},
    ]
    with pytest.raises(ValueError):
        map_rows(["a"], ["seed", "seed"], np.array([True]), xy[:1])


def test_files_written(tmp_path):
    emb = _clusters()
    ids = [f"s{i}" for i in range(len(emb))]
    ops = ["seed"] * 38 + ["diversify", "diversify", "seed", "seed"]
    sparse = np.zeros(len(emb), dtype=bool)
    sparse[-2:] = True
    info = write_embedding_map(emb, ids, ops, sparse, tmp_path, "test map")
    stored = np.load(io.BytesIO((tmp_path / "embeddings.npy").read_bytes()), allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == emb.shape
    assert np.allclose(stored, emb, atol=2e-3)
    rows = json.loads((tmp_path / "embedding_map.json").read_text())
    assert [r["id"] for r in rows] == ids
    assert sum(r["sparse"] for r in rows) == 2 and sum(r["kind"] == "diversify" for r in rows) == 2
    assert (tmp_path / "embedding_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(info["explained_variance"]) == 2
