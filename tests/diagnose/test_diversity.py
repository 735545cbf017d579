import numpy as np
import pytest

from middo.diagnose.diversity import (
    CPU_BLOCK_ELEMS,
    _chunk_rows,
    block_elems,
    knn_similarity,
    knn_similarity_bruteforce,
    neighbour_ids,
    prompt_embeddings,
)
from middo.diagnose.thresholds import flag_diversity

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Write a Python function that reverses a list.",
    "Write a Python function that sorts a list of numbers.",
    "Write a Python function that counts vowels in a string.",
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that returns the maximum of a list.",
    "Write a Python function that reverses a string.",  # exact duplicate of 0
    "Describe the drone-laying behaviour of a queenless honeybee colony and the role of tergal gland pheromones.",
]


@pytest.mark.slow
def test_duplicate_is_one_and_outlier_flagged(scoring_model):
    lm = scoring_model
    emb = prompt_embeddings(lm.model, lm.tokenizer, PROMPTS, lm.device)
    assert emb.shape == (len(PROMPTS), lm.model.config.hidden_size)
    sims = knn_similarity(emb, k=1)
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[6] == pytest.approx(1.0, abs=1e-5)
    flags, _ = flag_diversity(knn_similarity(emb, k=2), m=1.0)
    assert np.flatnonzero(flags).tolist() == [7]


@pytest.mark.slow
def test_embeddings_invariant_to_batch_and_padding(scoring_model):
    lm = scoring_model
    a = prompt_embeddings(lm.model, lm.tokenizer, PROMPTS, lm.device, max_tokens=1)
    b = prompt_embeddings(lm.model, lm.tokenizer, PROMPTS, lm.device, max_tokens=100000, padding_side="left")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,d,k,max_elems", [(50, 8, 1, 100), (257, 16, 2, 1000), (300, 32, 5, 1 << 26)])
def test_chunked_knn_equals_bruteforce(n, d, k, max_elems):
    x = np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)
    sims, idx = knn_similarity(x, k=k, max_elems=max_elems, return_indices=True)
    np.testing.assert_allclose(sims, knn_similarity_bruteforce(x, k), rtol=1e-5, atol=1e-5)
    assert idx.shape == (n, k)
    assert not (idx == np.arange(n)[:, None]).any()  # never itself


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Points around 8 centres: neighbours are close, as for real prompt embeddings, and ties do not occur."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(8, d))[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _bruteforce_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("rows_per_block", [1, 7, 64, 203])  # 203 = N: a single block, as a GPU would run it
def test_block_size_does_not_change_the_neighbours(rows_per_block):
    n, k = 203, 3
    x = _clustered(n, 24, seed=rows_per_block)
    sims, idx = knn_similarity(x, k=k, max_elems=rows_per_block * n, return_indices=True)
    assert idx.tolist() == _bruteforce_neighbours(x, k).tolist()  # the same neighbours, in the same order
    np.testing.assert_allclose(sims, knn_similarity_bruteforce(x, k), rtol=1e-5, atol=1e-5)


def test_cuda_blocks_are_sized_from_free_memory():
    gib = 2**30
    n = 1_000_000
    assert _chunk_rows(n, block_elems("cpu", 75 * gib)) == _chunk_rows(n, CPU_BLOCK_ELEMS) == 67  # as before
    assert block_elems("cuda", None) == CPU_BLOCK_ELEMS  # free memory unknown
    h100 = _chunk_rows(n, block_elems("cuda", 75 * gib))  # an 80 GB GPU with the embeddings loaded
    assert h100 >= 2000  # 30x fewer blocks than at the CPU's cap
    for free in (1 * gib, 10 * gib, 75 * gib, 139 * gib):
        elems = block_elems("cuda", free)
        assert 4 * elems <= free / 8  # the float32 block is at most an eighth of what is free
        assert elems <= 2**31  # top-k indexes the block with 32-bit offsets
    assert _chunk_rows(n, block_elems("cuda", 1000)) == 1  # almost nothing free: one row at a time, never zero


@pytest.mark.gpu
def test_cuda_large_blocks_find_the_cpu_neighbours():
    """On CUDA the default block is sized from free memory (one block here); the neighbours are the CPU's."""
    x = _clustered(5000, 64, seed=5)
    sims, idx = knn_similarity(x, k=3, device="cuda", return_indices=True)
    cpu_sims, cpu_idx = knn_similarity(x, k=3, return_indices=True)
    assert idx.tolist() == cpu_idx.tolist()
    np.testing.assert_allclose(sims, cpu_sims, rtol=1e-5, atol=1e-5)


def test_neighbour_ids_most_similar_first_self_excluded():
    # angles 0°, 10°, 30°, 90°, 100°: cosine order is plain to read off
    deg = np.radians([0.0, 10.0, 30.0, 90.0, 100.0])
    emb = np.stack([np.cos(deg), np.sin(deg)], 1).astype(np.float32) * np.array([[1.0], [2.0], [0.5], [3.0], [1.0]])
    ids = ["a", "b", "c", "d", "e"]
    sims, idx = knn_similarity(emb, k=2, return_indices=True)
    assert neighbour_ids(ids, idx) == [["b", "c"], ["a", "c"], ["b", "a"], ["e", "c"], ["d", "c"]]
    assert sims[0] == pytest.approx((np.cos(np.radians(10)) + np.cos(np.radians(30))) / 2, abs=1e-6)
    # chunked (one row per block) gives the same neighbours
    assert knn_similarity(emb, k=2, max_elems=1, return_indices=True)[1].tolist() == idx.tolist()


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k must be between 1 and N-1 = 2"):
        knn_similarity(np.eye(3, dtype=np.float32), k=3)
