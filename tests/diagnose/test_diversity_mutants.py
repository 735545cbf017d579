"""Rules of ``diagnose/diversity.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded."""

import numpy as np
import torch

from middo.diagnose.diversity import (
    CPU_BLOCK_ELEMS,
    CUDA_BLOCK_ELEMS_MAX,
    _chunk_rows,
    _free_bytes,
    block_elems,
    knn_similarity,
    knn_similarity_bruteforce,
)


def test_a_cuda_block_is_a_32nd_of_free_bytes_between_one_and_the_cap():
    """free/32 elements = 4-byte floats in an eighth of free memory; at least one, at most the int32-safe cap."""
    assert block_elems("cuda", 32 * 1000) == 1000
    assert block_elems("cuda", 32 * 1000 + 31) == 1000
    assert block_elems("cuda", 31) == 1
    assert block_elems("cuda", 64 * CUDA_BLOCK_ELEMS_MAX) == CUDA_BLOCK_ELEMS_MAX
    assert block_elems("cuda", 0) == block_elems("cpu", None) == block_elems("cpu", 2**40) == CPU_BLOCK_ELEMS


def test_rows_per_block_fill_the_budget_without_exceeding_n():
    assert _chunk_rows(10, 35) == 3  # 3 rows x 10 columns fit in 35 elements, 4 do not
    assert _chunk_rows(10, 10**6) == 10
    assert _chunk_rows(10, 5) == 1  # never zero rows


def test_free_memory_is_only_asked_of_a_cuda_device():
    assert _free_bytes(torch.device("cpu")) is None


def test_the_bruteforce_reference_uses_the_same_default_k():
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    np.testing.assert_allclose(knn_similarity_bruteforce(x), knn_similarity(x), rtol=1e-5, atol=1e-5)
