"""The vllm backend's arguments, built without vllm (it lives in its own environment; the engine itself runs in the
GPU test of tests/test_gpu_paths.py where vllm is installed)."""

from __future__ import annotations

from middo.refine.prompts import rewrite_schema
from middo.teachers import Sampling
from middo.teachers.vllm_backend import conversation, engine_kwargs, sampling_kwargs


def test_engine_kwargs_pass_the_settings_and_leave_out_an_unset_context_length():
    assert engine_kwargs(2, 8192, 0.85) == {
        "tensor_parallel_size": 2,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.85,
    }
    assert engine_kwargs(1, 0, 0.9) == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.9}  # the model's own


def test_sampling_kwargs_and_the_system_message():
    sampling = Sampling(max_new_tokens=64, temperature=1.0, top_p=0.9, seed=3, response_schema=rewrite_schema())
    assert sampling_kwargs(sampling) == {"max_tokens": 64, "temperature": 1.0, "top_p": 0.9, "seed": 3}
    assert conversation("", "Hi.") == [{"role": "user", "content": "Hi."}]
    assert conversation("Be brief.", "Hi.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
    ]


def test_a_completion_output_cut_at_max_tokens_is_marked_cut():
    """vLLM's ``CompletionOutput.finish_reason`` is "length" when a reply hit ``max_tokens``; refine must see it."""
    from middo.teachers import vllm_backend

    cut, done, unfinished = (vllm_backend.reply_of("Half of", r) for r in ("length", "stop", None))
    assert [(r, r.finish_reason) for r in (cut, done, unfinished)] == [
        ("Half of", "length"),
        ("Half of", "stop"),
        ("Half of", "stop"),
    ]
    assert vllm_backend.reply_of("  ", "length") is None  # an empty reply stays a failed one
