"""vLLM as the teacher: the fastest way to refine a large dataset on a GPU.

vllm is not a dependency of middo and is never installed in middo's main environment: it pins its own torch build
and would replace the one middo trains with. Install it in a separate environment (``python -m venv .venv-vllm &&
.venv-vllm/bin/pip install vllm && .venv-vllm/bin/pip install -e .``) and run the refine stage from there. It is
imported only inside :class:`VLLMTeacher`, after a check that says what is missing.
"""

from __future__ import annotations

from pathlib import Path

from middo.optional import require
from middo.teachers.base import Sampling


class VLLMTeacher:
    """Offline batched generation with ``vllm.LLM.chat``; vLLM schedules the whole list itself."""

    backend = "vllm"

    def __init__(self, model_path: str | Path, **engine_kwargs):
        """
        Args:
            model_path: a local HF model folder (or any name vLLM can load).
            **engine_kwargs: passed to ``vllm.LLM`` (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``,
                ``max_model_len``, ``dtype``).

        Raises:
            MiddoError: vllm is not installed in this environment, or there is no CUDA GPU.
        """
        require("vllm", needs_cuda=True)
        from vllm import LLM, SamplingParams

        self.model = str(model_path)
        self._sampling_params = SamplingParams
        self.llm = LLM(model=self.model, **engine_kwargs)

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer every prompt in one vLLM call; an empty reply is ``None``."""
        if not prompts:
            return []
        params = self._sampling_params(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        outputs = self.llm.chat(conversations, params, use_tqdm=True)
        texts = [out.outputs[0].text if out.outputs else "" for out in outputs]
        return [t if t.strip() else None for t in texts]
