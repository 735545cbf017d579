import numpy as np
import pytest

from middo.diagnose.diversity import knn_similarity, knn_similarity_bruteforce, neighbour_ids, prompt_embeddings
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
