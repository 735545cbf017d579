"""Run lm-evaluation-harness tasks on a round's checkpoint and write the same ``eval.json`` as middo's own suites.

The harness gives many more tasks (and other people's numbers to compare with); this bridge only translates. The
model runs through lm-eval's ``hf`` backend, or ``vllm`` when the device resolves to CUDA and vllm is importable, with
middo's device and dtype rule (:mod:`middo.device`). Every task must score each item 0/1 so that the 95% intervals
(:mod:`middo.evaluate.stats`) and ``compare``'s item pairing work as for the builtin suites: per-item results go to
``<stem>_details.jsonl`` keyed by ``(suite, id)``, ``id`` being lm-eval's ``doc_id``.

The offline tasks shipped in ``configs/lm_eval/`` (``middo_gsm8k_local``, ``middo_mmlu_local``) read package files
from disk; the harness's task index is only scanned (about 8 s) when a task is not found on the include path.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError
from middo.evaluate.stats import intervals
from middo.evaluate.suite import details_path
from middo.optional import is_available
from middo.provenance import device_name, dtype_name, environment, package_version, write_metrics

PREFERRED_METRICS = ("acc", "exact_match")  # then the task's other metrics, in the order it lists them
INSTALL = 'pip install -e ".[eval]"'
CODE_EVAL_ENV = "HF_ALLOW_CODE_EVAL"  # HF evaluate's code_eval runs model code only when this is "1"
log = logging.getLogger(__name__)


def _require_lm_eval() -> None:
    if not is_available("lm_eval"):
        raise MiddoError(f"eval.backend: lm-eval needs lm-evaluation-harness: {INSTALL}")


def task_manager(tasks: Sequence[str], include_path: str | Path, seed: int):
    """An lm-eval ``TaskManager`` that knows every name in ``tasks``, indexing the harness's own tasks only if needed.

    ``seed`` reaches the tasks as metadata ``middo_seed`` (the offline tasks order their items by it).

    Raises:
        MiddoError: lm-eval is not installed, ``include_path`` is not a folder, no tasks are given, or some names are
            unknown (each with its closest known names).
    """
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path and not Path(include_path).is_dir():
        raise MiddoError(
            f"eval.lm_eval.include_path: '{include_path}' is not a folder of lm-eval task YAMLs ('' for none)"
        )
    if not tasks:
        raise MiddoError("eval.tasks is empty: name the lm-eval tasks to run, e.g. [middo_gsm8k_local]")
    metadata = {"middo_seed": seed}
    manager = None
    if include_path:
        manager = TaskManager(include_path=str(include_path), include_defaults=False, metadata=metadata)
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=str(include_path) or None, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hints.append(f"'{name}'" + (f" (did you mean: {', '.join(close)}?)" if close else " (no close match)"))
        raise MiddoError(
            f"eval.tasks: unknown lm-eval task(s) {'; '.join(hints)}; searched "
            + (f"{include_path} and " if include_path else "")
            + "lm-eval's own tasks (`lm_eval ls tasks` lists them)"
        )
    return manager


def _is_binary(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, (bool, int, float)) and float(v) in (0.0, 1.0) for v in values)


def primary_metric(task: str, samples: list[dict[str, Any]], aggregated: dict[str, Any]) -> tuple[str, str]:
    """The ``(metric, filter)`` whose per-item value is this task's 0/1 correctness.

    Rule: the first filter the task lists (``none`` when it has none); among that filter's metrics, ``acc`` then
    ``exact_match`` then the others in the task's order, taking the first whose every per-item value is 0 or 1 and
    whose mean is lm-eval's own aggregate (so a corpus-level or non-binary metric is never taken for accuracy).

    Raises:
        MiddoError: no metric of the task qualifies.
    """
    filters = list(dict.fromkeys(s["filter"] for s in samples))
    rows = [s for s in samples if s["filter"] == filters[0]]
    listed = list(dict.fromkeys(m for s in rows for m in s["metrics"]))
    for metric in [m for m in PREFERRED_METRICS if m in listed] + [m for m in listed if m not in PREFERRED_METRICS]:
        values = [s.get(metric) for s in rows]
        mean = sum(float(v) for v in values) / len(values) if _is_binary(values) else None
        reported = aggregated.get(f"{metric},{filters[0]}")
        if mean is not None and isinstance(reported, (int, float)) and abs(mean - reported) < 1e-9:
            return metric, filters[0]
    raise MiddoError(
        f"lm-eval task '{task}': none of its metrics {listed} (filter '{filters[0]}') is a 0/1 score per item whose "
        "mean is the task's result; middo needs one for its intervals and item pairing (use a task scored by "
        "acc or exact_match)"
    )


def _detail(task: str, sample: dict[str, Any], metric: str) -> dict[str, Any]:
    """One ``eval_details.jsonl`` row; a multiple-choice reply is shown as the chosen continuation."""
    target, response = sample["target"], sample["filtered_resps"]
    choices = [a[1] for a in sample["arguments"] if isinstance(a, (list, tuple)) and len(a) == 2]
    if len(response) > 1 and len(choices) == len(response):  # multiple choice: one (loglik, is_greedy) per choice
        best = max(range(len(response)), key=lambda i: (float(response[i][0]), -i))
        response = choices[best].strip()
        if isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target].strip()
    elif len(response) == 1:
        response = response[0]
    return {
        "suite": task,
        "id": str(sample["doc_id"]),
        "correct": bool(sample[metric]),
        "target": target,
        "response": response,
    }


def vllm_model_args(pretrained: str, adapter: str | None, dtype: str, seed: int) -> dict[str, Any]:
    """lm-eval's ``vllm`` model arguments; a LoRA adapter goes as ``lora_local_path`` with a ``max_lora_rank`` that
    holds it (:func:`middo.modeling.vllm_lora_rank`).

    Raises:
        MiddoError: the adapter's rank is above the largest rank vLLM accepts.
    """
    from middo.modeling import vllm_lora_rank

    args: dict[str, Any] = {"pretrained": pretrained, "dtype": dtype, "seed": seed, "batch_size": "auto"}
    if adapter is None:
        return args
    return {**args, "lora_local_path": adapter, "max_lora_rank": vllm_lora_rank(adapter)}


def _model(model_path: str | Path, device: str, dtype: str, batch_size: int, seed: int) -> tuple[str, dict, str, str]:
    """``(lm-eval model name, model_args, device kind, dtype name)`` from middo's device and dtype rule."""
    from middo.device import resolve_device, resolve_dtype
    from middo.modeling import adapter_base

    base = adapter_base(model_path)  # a LoRA round saved as its adapter only (train.lora.merge: false)
    if base is None and not (Path(model_path) / "config.json").is_file():
        raise MiddoError(
            f"{model_path}: not a model folder (no config.json); run `dvc repro` for the stage that makes it"
        )
    dev = resolve_device(device)
    dt = dtype_name(resolve_dtype(dtype, dev))
    # An absolute path: lm-eval asks the hub for a model's sha, and 'models/base' reads as a hub repo id.
    path = str(Path(model_path).resolve())
    weights = {"pretrained": str(Path(base).resolve()), "peft": path} if base is not None else {"pretrained": path}
    if dev.type == "cuda" and is_available("vllm"):
        return "vllm", vllm_model_args(weights["pretrained"], path if base else None, dt, seed), "cuda", dt
    return "hf", {**weights, "dtype": dt, "device": str(dev), "batch_size": batch_size}, device_name(dev), dt


def evaluate_lm_eval(
    model_path: str | Path,
    limit: int,
    out_path: str | Path,
    seed: int,
    bootstrap: int,
    tasks: Sequence[str],
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 256,
    include_path: str | Path = "configs/lm_eval",
    batch_size: int = 1,
    chat_template: bool = True,
    allow_code_eval: bool = False,
) -> dict[str, Any]:
    """Score one checkpoint on lm-eval tasks; write the metrics JSON and per-item details like the builtin backend.

    Tasks that execute the model's code (lm-eval's ``unsafe_code``: humaneval, mbpp, ...) run it in this process's
    own environment through HF evaluate's ``code_eval``, with no sandbox; they run only when ``allow_code_eval`` (the
    user's ``eval.humaneval.sandbox: none``). ``HF_ALLOW_CODE_EVAL`` is "1" during the call exactly then, and unset
    otherwise, whatever the shell exported; it is restored afterwards.

    Args:
        model_path: a local HF model folder (one round's checkpoint).
        limit: items per task, lm-eval's first ``limit`` docs (0 for all); the offline tasks keep their docs in a
            seeded shuffle, so these are the items the builtin suite of the same name scores.
        out_path: the metrics JSON to write; details go beside it (:func:`middo.evaluate.suite.details_path`).
        seed: lm-eval's python, numpy, torch and few-shot seeds, the vLLM seed and the offline tasks' item order.
        bootstrap: resamples for the average's 95% interval.
        tasks: lm-eval task (or group) names; each reported leaf task must score items 0/1 (:func:`primary_metric`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``; CUDA runs vLLM when it is installed, else the HF backend.
        dtype: ``auto`` (middo's rule: bf16 only where the hardware has it), ``float32``, ``bfloat16``, ``float16``.
        max_new_tokens: generation cap for generative tasks (lm-eval's ``max_gen_toks``).
        include_path: folder of extra task YAMLs; '' for lm-eval's own tasks only.
        batch_size: the HF backend's batch size (vLLM schedules its own).
        chat_template: wrap prompts in the checkpoint's chat template.
        allow_code_eval: let code-executing tasks run the model's code unsandboxed (with a warning).

    Returns:
        The metrics written (``accuracy``, ``average``, ``n``, ``interval``) plus ``metric`` (``metric,filter`` per
        task), ``backend`` and ``env``, which go to the env record beside them.

    Raises:
        MiddoError: lm-eval missing, a bad include path, unknown task names, a task with no 0/1 metric, or a task
            that runs model code while ``allow_code_eval`` is off.
    """
    manager = task_manager(list(tasks), include_path, seed)
    from lm_eval import simple_evaluate

    model, model_args, dev, dt = _model(model_path, device, dtype, batch_size, seed)
    if allow_code_eval:
        log.warning(
            "eval.humaneval.sandbox: none - lm-eval tasks that execute code run the model's code in this "
            "environment without a sandbox (%s=1)",
            CODE_EVAL_ENV,
        )
    before = os.environ.pop(CODE_EVAL_ENV, None)
    if allow_code_eval:
        os.environ[CODE_EVAL_ENV] = "1"
    try:
        res = simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit or None,
            log_samples=True,
            bootstrap_iters=0,  # lm-eval's stderr is not used: stats.intervals gives ours
            apply_chat_template=chat_template,
            fewshot_as_multiturn=chat_template,
            gen_kwargs={"max_gen_toks": max_new_tokens},
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            confirm_run_unsafe_code=allow_code_eval,
        )
    except ValueError as exc:  # lm-eval's refusal of an unsafe task, or code_eval's of the unset variable
        if allow_code_eval or not ("unsafe" in str(exc) or CODE_EVAL_ENV in str(exc)):
            raise
        raise MiddoError(
            f"eval.tasks: {list(tasks)} include a task that executes the model's code, which lm-eval runs in this "
            "environment without a sandbox; middo runs it only with eval.humaneval.sandbox: none (you trust the "
            "model's code). The builtin humaneval suite runs it inside bubblewrap instead."
        ) from exc
    finally:
        os.environ.pop(CODE_EVAL_ENV, None)
        if before is not None:
            os.environ[CODE_EVAL_ENV] = before
    correct: dict[str, list[bool]] = {}
    metric_used: dict[str, str] = {}
    rows: list[str] = []
    for task in res["samples"]:  # lm-eval's order: the leaf tasks of `tasks`, as given
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        if not samples:
            raise MiddoError(f"lm-eval task '{task}' has no items to score")
        metric, filt = primary_metric(task, samples, res["results"].get(task, {}))
        samples = [s for s in samples if s["filter"] == filt]
        correct[task] = [bool(s[metric]) for s in samples]
        metric_used[task] = f"{metric},{filt}"
        rows.extend(json.dumps(_detail(task, s, metric), ensure_ascii=False, default=str) for s in samples)
    if not correct:
        raise MiddoError(f"lm-eval returned no per-item results for {list(tasks)}")
    accuracy = {t: sum(c) / len(c) for t, c in correct.items()}
    metrics = {
        "accuracy": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "n": {t: len(c) for t, c in correct.items()},
        "interval": intervals(correct, bootstrap, seed),
    }
    # how the numbers were measured (backend, each task's metric and filter) is provenance: strings, not metrics
    env = environment(device=dev, dtype=dt) | {
        "backend": "lm-eval",
        "lm_eval": package_version("lm_eval"),
        "lm_eval_model": model,
        "metric": metric_used,
    }
    atomic_write_text(details_path(out_path), "".join(row + "\n" for row in rows))
    write_metrics(out_path, metrics, env)
    return {**metrics, "metric": metric_used, "backend": "lm-eval", "env": env}
