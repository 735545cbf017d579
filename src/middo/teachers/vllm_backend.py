"""vLLM as the teacher: the fastest way to refine a large dataset on a GPU.

vllm is not a dependency of middo and is never installed in middo's main environment: it pins its own torch build
and would replace the one middo trains with. Install it in a separate environment (``python -m venv .venv-vllm &&
.venv-vllm/bin/pip install vllm && .venv-vllm/bin/pip install -e .``) and run the refine stage from there. It is
imported only inside :class:`VLLMTeacher`, after a check that says what is missing.

The system prompt goes through the model's chat template (``LLM.chat``). A ``Sampling.response_schema`` becomes
vLLM's structured outputs (guided decoding: every reply matches the schema): ``StructuredOutputsParams`` on vLLM
releases that have it, ``GuidedDecodingParams`` (the older name, removed in 0.12) on those before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from middo.optional import require
from middo.teachers.base import Reply, Sampling, warn_unused_extra_body
from middo.teachers.cache import local_identity, request_identity
from middo.teachers.usage import Usage


def engine_kwargs(tensor_parallel_size: int = 1, max_model_len: int = 0, gpu_memory_utilization: float = 0.9) -> dict:
    """The ``vllm.LLM`` arguments of ``refine.teacher.vllm``; ``max_model_len`` 0 leaves the model's own."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
    }
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    return kwargs


def sampling_kwargs(sampling: Sampling) -> dict:
    """The ``vllm.SamplingParams`` arguments of ``sampling``, leaving out its schema (see :func:`_structured`)."""
    return {
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
    }


def conversation(system_prompt: str, prompt: str) -> list[dict[str, str]]:
    """One request as chat messages: the system message (when set), then the prompt as the user turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def reply_of(text: str, finish_reason: str | None, usage: Usage | None = None) -> Reply | None:
    """One vLLM ``CompletionOutput`` as a reply: ``None`` when empty; ``finish_reason`` is ``stop``, ``length`` (cut
    at ``max_tokens``), ``abort``, or ``None`` while unfinished (only seen when streaming), kept as ``stop``;
    ``usage`` counts the request's prompt token ids and the output's token ids."""
    if not text.strip():
        return None
    return Reply(text, finish_reason or "stop", usage)


def _structured(schema: dict) -> dict:
    """``SamplingParams`` arguments that constrain decoding to the JSON ``schema``, in this vLLM's own terms."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}


class VLLMTeacher:
    """Offline batched generation with ``vllm.LLM.chat``; vLLM schedules the whole list itself."""

    backend = "vllm"
    served = False  # the weights are a folder here: its tokenizer counts what a prompt costs

    @classmethod
    def config_kwargs(cls, cfg, device: str, dtype: str) -> dict:
        """The constructor arguments from ``refine.teacher`` (a :class:`~middo.config.TeacherConfig`); vLLM picks
        its own device and dtype."""
        warn_unused_extra_body(cfg)
        engine = cfg.vllm
        return {
            "model_path": cfg.model,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "max_model_len": engine.max_model_len,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "system_prompt": cfg.system_prompt,
        }

    @classmethod
    def cache_identity(cls, cfg, device: str, dtype: str) -> dict[str, str]:
        """The weights' content (or name and revision) and the system prompt."""
        identity = local_identity(cls.backend, cfg.model, cfg.cache_dir, cfg.revision)
        identity.update(request_identity(cfg.system_prompt))
        return identity

    def __init__(
        self,
        model_path: str | Path,
        tensor_parallel_size: int = 1,
        max_model_len: int = 0,
        gpu_memory_utilization: float = 0.9,
        system_prompt: str = "",
    ):
        """
        Args:
            model_path: a local HF model folder (or any name vLLM can load).
            tensor_parallel_size: GPUs the model is split over.
            max_model_len: context length; 0 keeps the model's own.
            gpu_memory_utilization: fraction of each GPU's memory vLLM may take.
            system_prompt: a system message before every prompt; empty sends none.

        Raises:
            MiddoError: vllm is not installed in this environment, or there is no CUDA GPU.
        """
        require("vllm", needs_cuda=True)
        from vllm import LLM, SamplingParams

        self.model = str(model_path)
        self.system_prompt = system_prompt
        self._sampling_params = SamplingParams
        self.llm = LLM(model=self.model, **engine_kwargs(tensor_parallel_size, max_model_len, gpu_memory_utilization))

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer every prompt in one vLLM call; an empty reply is ``None``; each reply keeps vLLM's
        ``CompletionOutput.finish_reason`` (``length``: cut at ``max_tokens``)."""
        if not prompts:
            return []
        schema = sampling.schema
        params = self._sampling_params(**sampling_kwargs(sampling), **(_structured(schema) if schema else {}))
        conversations = [conversation(self.system_prompt, p) for p in prompts]
        outputs = self.llm.chat(conversations, params, use_tqdm=True)
        replies = []
        for out in outputs:
            c = out.outputs[0] if out.outputs else None
            usage = Usage(len(out.prompt_token_ids or ()), len(c.token_ids or ())) if c is not None else None
            replies.append(reply_of(c.text, c.finish_reason, usage) if c is not None else None)
        return replies
