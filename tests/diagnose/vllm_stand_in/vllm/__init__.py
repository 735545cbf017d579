"""A CPU stand-in for the ``vllm`` package, for tests only.

vLLM cannot run here: it needs CUDA and replaces torch, so it is never installed into middo's env. This package
implements the slice of vLLM's offline API that ``middo/diagnose/vllm_judge_child.py`` calls (``LLM(**engine)``,
``LLM.generate(prompts, params, use_tqdm=, lora_request=)``, ``SamplingParams``, ``vllm.lora.request.LoRARequest``)
with transformers' ``generate``, one prompt at a time, and appends what it was given (the engine arguments, each
request's sampling arguments, the LoRA request, the environment's CUDA_VISIBLE_DEVICES and whether torchrun's
variables leaked in) to the JSON-lines file named by ``VLLM_STAND_IN_LOG``. So a CPU test runs middo's whole vLLM judge
protocol (request file, child process, environment, answers, merge) and sees what reached the engine; the real vLLM
runs in ``tests/diagnose/test_quality_vllm.py``'s GPU test.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def _log(event: dict) -> None:
    path = os.environ.get("VLLM_STAND_IN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, **engine):
        _log(
            {
                "engine": {"model": model, "tokenizer": tokenizer, **engine},
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "torchrun_vars": sorted(
                    k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT") if k in os.environ
                ),
            }
        )
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=torch.float32).eval()

    @torch.inference_mode()
    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        out = []
        for prompt, p in zip(prompts, params):
            kw = p.kwargs
            _log({"sampling": kw, "lora": getattr(lora_request, "args", None)})
            ids = torch.tensor([prompt["prompt_token_ids"]])
            sample = kw["temperature"] > 0
            if sample:
                torch.manual_seed(kw["seed"])
            gen = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=kw["max_tokens"],
                do_sample=sample,
                pad_token_id=self.tokenizer.pad_token_id,
                **(
                    {"temperature": kw["temperature"], "top_p": kw["top_p"], "top_k": max(kw["top_k"], 0)}
                    if sample
                    else {}
                ),
            )
            new = gen[0, ids.shape[1] :]
            text = self.tokenizer.decode(new, skip_special_tokens=kw.get("skip_special_tokens", True))
            cut = len(new) == kw["max_tokens"] and self.tokenizer.eos_token_id not in new.tolist()
            out.append(
                SimpleNamespace(outputs=[SimpleNamespace(text=text, finish_reason="length" if cut else "stop")])
            )
        return out
