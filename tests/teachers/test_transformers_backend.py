"""The local transformers teacher: greedy replies must not depend on how prompts were batched."""

from __future__ import annotations

import pytest
import torch

from middo.teachers import Sampling, TransformersTeacher


@pytest.fixture
def one_torch_thread():
    """On a small shared CPU box two torch threads competing with other jobs run ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_greedy_output_does_not_depend_on_batch_budget(base_model_dir, one_torch_thread):
    teacher = TransformersTeacher(base_model_dir, device="cpu", dtype="float32")
    prompts = ["Say hi.", "Name three colours of the rainbow and say why the sky is blue."]  # unequal: padding
    sampling = Sampling(max_new_tokens=6)
    teacher.max_tokens = 100_000
    together = teacher.complete(prompts, sampling)
    teacher.max_tokens = 1  # every prompt alone, no padding
    alone = teacher.complete(prompts, sampling)
    assert together == alone
    assert all(isinstance(t, str) and t.strip() for t in together), together
    assert teacher.complete([], sampling) == []


@pytest.mark.slow
def test_sampling_is_seeded(base_model_dir, one_torch_thread):
    teacher = TransformersTeacher(base_model_dir, device="cpu", dtype="float32")
    sampling = Sampling(max_new_tokens=6, temperature=1.0, seed=7)
    assert teacher.complete(["Tell me a story."], sampling) == teacher.complete(["Tell me a story."], sampling)
