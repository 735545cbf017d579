"""The vLLM judge's worker: one process that decodes a file of judge prompts with ``vllm.LLM`` and writes the answers.

Run by :func:`middo.diagnose.quality_vllm.judge_vllm` as ``PYTHON vllm_judge_child.py JOB.json``, where PYTHON is
``diagnose.quality.vllm_python``. It imports only the standard library and vllm, never middo: vllm pins its own torch
and lives in its own env (``.venv-vllm``), which need not have middo installed. A separate process also gives the
GPU memory back when it ends, which an in-process ``vllm.LLM`` does not do reliably, and keeps vLLM's own
distributed set-up away from a ``torchrun`` job's process group.

The job file (JSON) holds:

- ``engine``: ``vllm.LLM`` keyword arguments (model, dtype, max_model_len, gpu_memory_utilization, enable_lora, ...);
- ``sampling``: ``vllm.SamplingParams`` keyword arguments shared by every request, without ``seed``;
- ``seed``: request ``i`` samples with seed ``seed + i``, so an answer does not depend on what it was batched with;
- ``lora``: ``null``, or ``{"name", "id", "path"}`` of the adapter every request goes through;
- ``requests``: a JSONL file of ``{"i": index, "ids": [prompt token ids]}``;
- ``answers``: the JSONL file to write, ``{"i": index, "text": answer, "finish": finish reason}`` per request, in
  request order; written to a temporary name and renamed when every request has its answer.
- ``chunk``: requests handed to vLLM at a time (bounds the memory the prompts take; vLLM batches within a chunk).
"""

from __future__ import annotations

import json
import os
import sys
from itertools import islice


def _chunks(path: str, size: int):
    with open(path, encoding="utf-8") as f:
        while True:
            lines = list(islice(f, size))
            if not lines:
                return
            yield [json.loads(line) for line in lines]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: vllm_judge_child.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    from vllm import LLM, SamplingParams

    lora = None
    if job.get("lora"):
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(job["lora"]["name"], int(job["lora"]["id"]), job["lora"]["path"])
    llm = LLM(**job["engine"])
    tmp = job["answers"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for reqs in _chunks(job["requests"], int(job.get("chunk", 20000))):
            params = [SamplingParams(**job["sampling"], seed=int(job["seed"]) + int(r["i"])) for r in reqs]
            prompts = [{"prompt_token_ids": r["ids"]} for r in reqs]
            results = llm.generate(prompts, params, use_tqdm=True, lora_request=lora)
            for r, res in zip(reqs, results):
                o = res.outputs[0]
                out.write(json.dumps({"i": r["i"], "text": o.text, "finish": o.finish_reason}) + "\n")
    os.replace(tmp, job["answers"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
