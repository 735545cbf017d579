"""The quality judge through vLLM, as the reference runs it (``quality_infer.py``): ``diagnose.quality.engine: vllm``.

The judge prompts are the ones the HF path decodes (:func:`middo.diagnose.quality.judge_ids`: the same chat template,
the same cutoff that keeps the question), and the answers are parsed by the same :func:`parse_score`; only the
decoder changes. vLLM runs in a child process (``vllm_judge_child.py``) started with ``diagnose.quality.vllm_python``:
vllm pins its own torch and is never installed into middo's env, so that Python is usually another env's
(``.venv-vllm/bin/python``); the child imports vllm and the standard library only. Under ``torchrun`` each rank
writes its share of the prompts, frees the GPU its HF model held, and starts its own child pinned to its GPU
(``CUDA_VISIBLE_DEVICES``, torchrun's variables removed), so every GPU judges and the ranks merge the scores as the
HF path does.

Each request samples with its own seed (the judgement's index in the dataset, as on the HF path), so a rerun repeats
its answers however vLLM batches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from middo.diagnose.batching import progress
from middo.diagnose.quality import JUDGEMENTS, QualityResult, gather_answers, judge_ids, parse_score
from middo.distributed import Shard, owned_mask
from middo.errors import MiddoError
from middo.records import Record

CHILD = Path(__file__).with_name("vllm_judge_child.py")
CHUNK = 512  # judgements per shard unit: round-robin over these keeps the ranks' shares even
# what torchrun sets for a worker; vLLM reads several of them and would join the job's process group
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


def uses_vllm(q) -> bool:
    """Whether the diagnosis decodes with vLLM: ``engine: vllm`` and a generate judge (as its mode or compared)."""
    return q.engine == "vllm" and (q.mode == "generate" or q.compare_modes)


def check_vllm(python: str, device_type: str) -> str:
    """The Python that runs the child, after checking it can import vllm and that the diagnosis runs on CUDA.

    Checked before any model is loaded, so a missing vllm costs seconds, not a diagnosis's loss passes.

    Raises:
        MiddoError: the device is not CUDA, the Python does not exist, or it cannot import vllm.
    """
    if device_type != "cuda":
        raise MiddoError(
            f"diagnose.quality.engine: vllm needs a CUDA GPU (base.device resolves to {device_type}); "
            "set diagnose.quality.engine: hf to judge with the diagnosis's HF model"
        )
    exe = python or sys.executable
    if python and not Path(python).is_file():
        raise MiddoError(
            f"diagnose.quality.vllm_python: {python} does not exist; make the vLLM env with "
            "`python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm`, or leave it empty to use this Python"
        )
    probe = subprocess.run([exe, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise MiddoError(
            f"diagnose.quality.engine: vllm: {exe} cannot import vllm ({last}); set diagnose.quality.vllm_python to "
            "the Python of an env that has it (`python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm`), "
            "or set diagnose.quality.engine: hf"
        )
    return exe


def sampling_kwargs(temperature: float, top_p: float, top_k: int, max_new_tokens: int) -> dict:
    """``vllm.SamplingParams`` arguments from ``diagnose.quality``: temperature 0 decodes greedily (vLLM's rule), a
    ``top_k`` of 0 means every token (vLLM's ``-1``, which every vLLM release accepts)."""
    return {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k if top_k > 0 else -1,
        "max_tokens": max_new_tokens,
        "repetition_penalty": 1.0,  # quality_infer.py's default
        "skip_special_tokens": True,
    }


def _context_window(folder: Path) -> int | None:
    """The model's context window (``max_position_embeddings`` in ``config.json``); None when it does not say."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def engine_kwargs(
    model_path: str | Path,
    dtype: str,
    *,
    cutoff: int,
    max_new_tokens: int,
    gpu_memory_utilization: float,
    seed: int,
    trust_remote_code: bool,
) -> tuple[dict, dict | None]:
    """``vllm.LLM`` arguments and the LoRA request for the model the diagnosis judges with.

    A LoRA round saved as its adapter (``train.lora.merge: false``) runs as base + adapter, as the reference passes
    ``adapter_name_or_path``; ``max_lora_rank`` is the adapter's rank rounded up to one vLLM accepts. The context is
    the judge prompt's cutoff plus the answer (``max_model_len``, at most the model's own window), so vLLM sizes its
    KV cache for what is asked, not for the model's whole window; cutoff 0 leaves the model's own.
    """
    from middo.modeling import adapter_base, vllm_lora_rank

    base = adapter_base(model_path)
    weights = Path(base if base is not None else model_path).resolve()
    engine: dict = {
        "model": str(weights),
        "tokenizer": str(Path(model_path).resolve()),  # an adapter folder carries the tokenizer it was trained with
        "dtype": dtype,
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "trust_remote_code": trust_remote_code,
        "tensor_parallel_size": 1,  # one GPU per process, as quality_infer.py; torchrun ranks split the prompts
        "disable_log_stats": True,
    }
    if cutoff > 0:
        limit = _context_window(weights)  # vLLM refuses a max_model_len above the model's own window
        engine["max_model_len"] = min(cutoff + max_new_tokens, limit) if limit else cutoff + max_new_tokens
    if base is None:
        return engine, None
    engine.update(enable_lora=True, max_lora_rank=vllm_lora_rank(model_path))
    return engine, {"name": "current", "id": 1, "path": str(Path(model_path).resolve())}


def child_env(environ: Mapping[str, str], gpu_index: int) -> dict[str, str]:
    """The child's environment: torchrun's variables removed (vLLM would read them and join this job's process
    group) and ``CUDA_VISIBLE_DEVICES`` narrowed to this process's GPU, counted among the GPUs this process sees."""
    env = {k: v for k, v in environ.items() if k not in TORCHRUN_VARS}
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and gpu_index >= len(visible):
        raise MiddoError(
            f"cuda:{gpu_index} is not among CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} "
            f"({len(visible)} visible)"
        )
    env["CUDA_VISIBLE_DEVICES"] = visible[gpu_index] if visible else str(gpu_index)
    return env


def read_answers(path: Path, wanted: Sequence[int]) -> dict[int, tuple[str, str]]:
    """``{index: (text, finish reason)}`` from the child's answers file, every wanted index present.

    Raises:
        MiddoError: the file is missing, a line is not an answer (names the line), or a request has no answer.
    """
    if not path.is_file():
        raise MiddoError(f"{path}: the vLLM judge wrote no answers (see its log above)")
    got: dict[int, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                got[int(row["i"])] = (str(row["text"]), str(row.get("finish") or "stop"))
            except (ValueError, KeyError, TypeError) as exc:
                raise MiddoError(f"{path}:{line_no}: not a judge answer ({exc!r})") from exc
    missing = [i for i in wanted if i not in got]
    if missing:
        raise MiddoError(f"{path}: {len(missing)} judge prompts have no answer (first: judgement {missing[0]})")
    return got


def judge_vllm(
    model_path: str | Path,
    tokenizer,
    records: Sequence[Record],
    *,
    python: str,
    dtype: str,
    gpu_index: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    cutoff: int,
    max_chars: int,
    gpu_memory_utilization: float,
    seed: int = 0,
    trust_remote_code: bool = False,
    shard: Shard = Shard(),
    work_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[QualityResult, list[str]]:
    """Judge every record with vLLM; the same result and answers as :func:`~middo.diagnose.quality.judge_generate`.

    Args:
        model_path: the model folder the diagnosis judges with (a full checkpoint or a LoRA adapter folder).
        tokenizer: that model's tokenizer (it renders the judge prompts, as on the HF path).
        python: the Python that runs the child (from :func:`check_vllm`).
        gpu_index: the CUDA device this process drives (``cuda:N`` -> N).
        seed: request ``i`` (the judgement's index in ``records`` x :data:`JUDGEMENTS`) samples with ``seed + i``.
        work_dir: where the request and answer files live while the child runs (a temporary folder inside it).

    Raises:
        MiddoError: the child failed, or an answer is missing.
    """
    n_j = len(JUDGEMENTS)
    n = len(records) * n_j
    mine = shard.take([range(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)])
    owned = owned_mask(n, mine)
    wanted = np.flatnonzero(owned).tolist()
    engine, lora = engine_kwargs(
        model_path,
        dtype,
        cutoff=cutoff,
        max_new_tokens=max_new_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    with tempfile.TemporaryDirectory(prefix="middo-vllm-judge-", dir=work_dir) as tmp:
        requests, answers_path, job_path = (
            Path(tmp, "requests.jsonl"),
            Path(tmp, "answers.jsonl"),
            Path(tmp, "job.json"),
        )
        with (
            open(requests, "w", encoding="utf-8") as f,
            progress(None, len(wanted), "quality(vllm prompts)", "judgement", shard.is_main) as bar,
        ):
            for i in wanted:
                r, j = divmod(i, n_j)
                ids = judge_ids(tokenizer, records[r], JUDGEMENTS[j], max_chars, cutoff)
                f.write(json.dumps({"i": i, "ids": ids}) + "\n")
                bar.update(1)
        job = {
            "engine": engine,
            "sampling": sampling_kwargs(temperature, top_p, top_k, max_new_tokens),
            "seed": seed,
            "lora": lora,
            "requests": str(requests),
            "answers": str(answers_path),
        }
        job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
        env = child_env(os.environ if environ is None else environ, gpu_index)
        code = subprocess.call([python, str(CHILD), str(job_path)], env=env)
        if code != 0:
            raise MiddoError(f"the vLLM judge ({python} {CHILD.name}) exited with status {code} (see the log above)")
        got = read_answers(answers_path, wanted)
    scores = np.zeros(n)
    answers = [""] * n
    counts = {"ok": 0, "clamped": 0, "unparseable": 0}
    for i in wanted:
        answers[i] = got[i][0]
        scores[i], status = parse_score(answers[i])
        counts[status] += 1
    scores = shard.merge_rows(scores, owned)
    counts = gather_answers(shard, owned, answers, counts)
    return QualityResult(scores.reshape(len(records), n_j), counts), answers
