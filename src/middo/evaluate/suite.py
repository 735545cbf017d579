"""Run a set of benchmark suites on one model and write the round's accuracy where DVC reads metrics.

The model is loaded once for all suites, and the generative suites' prompts are answered in one pooled greedy
generation (decoding is memory-bound, so one call over all of them costs little more than one suite's); each suite
then scores the answers to its own prompts. The metrics file is flat (``accuracy.<suite>``, ``average``, ``n.<suite>``,
``interval.<suite>.low``) so ``dvc metrics show`` and ``dvc metrics diff`` compare rounds directly; per-item results,
which a person reads to see *why* a number moved (and ``middo compare`` pairs across rounds), go to a sibling
``<stem>_details.jsonl``.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.distributed import Shard, from_env, local_device, write_rank_report
from middo.errors import MiddoError
from middo.evaluate import humaneval, ifbench, lucebench, mmlu
from middo.evaluate import math as math_suite
from middo.evaluate.generation import greedy_generate_pooled
from middo.evaluate.items import summarize
from middo.evaluate.stats import intervals
from middo.provenance import device_name, dtype_name, environment, write_metrics


@dataclass(frozen=True)
class Suite:
    """One benchmark: how to get its items and how to score a model on them."""

    load: Callable[..., list[dict[str, Any]]]  # (limit, seed) -> items
    score: Callable[..., dict[str, Any]]  # (lm, items, max_new_tokens=...) -> {"accuracy", "n", "results", ...}
    data: str  # package file the items come from (for the docs and error messages)
    aggregate: Callable[..., dict[str, Any]] = summarize  # per-item results -> scores (merging shards)
    preflight: Callable[..., None] | None = None  # (**options) -> None; raises before the model loads
    # (items, **options) -> the prompts score generates answers to, or None when these options generate nothing;
    # a suite with prompts takes score(..., completions=answers) so evaluate_model can pool the generation
    prompts: Callable[..., list[str] | None] | None = None


SUITES: dict[str, Suite] = {
    "humaneval": Suite(
        humaneval.load, humaneval.score, humaneval.DATA_FILE, preflight=humaneval.preflight, prompts=humaneval.prompts
    ),
    "math500": Suite(math_suite.load, math_suite.score, math_suite.DATA_FILE, prompts=math_suite.prompts),
    "ifbench": Suite(ifbench.load, ifbench.score, ifbench.DATA_FILE, ifbench.aggregate, prompts=ifbench.prompts),
    "gsm8k": Suite(
        lucebench.load_gsm8k, lucebench.score_gsm8k, lucebench.DATA_FILES["gsm8k"], prompts=lucebench.gsm8k_prompts
    ),
    "hellaswag": Suite(lucebench.load_hellaswag, lucebench.score_hellaswag, lucebench.DATA_FILES["hellaswag"]),
    "truthfulqa": Suite(lucebench.load_truthfulqa, lucebench.score_truthfulqa, lucebench.DATA_FILES["truthfulqa"]),
    "mmlu": Suite(mmlu.load, mmlu.score, mmlu.DATA_FILE, mmlu.aggregate, prompts=mmlu.generation_prompts),
}


def check_suites(suites: list[str], suite_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Raise before any model is loaded if a suite name is unknown, a run suite's options do not fit its ``score``,
    or a suite cannot run here (its ``preflight``: HumanEval without its sandbox).

    Raises:
        MiddoError: some names are not in :data:`SUITES`, the list is empty, or options name a keyword that a suite's
            ``score`` does not take (all problems at once); or a suite's preflight refused.
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        what = f"unknown suite(s) {unknown}" if unknown else "no suites given"
        raise MiddoError(f"evaluate: {what}; known suites: {', '.join(SUITES)}")
    problems = []
    for name in suites:
        options = dict((suite_options or {}).get(name, {}))
        if "completions" in options:  # evaluate_model's own argument to a generative suite's score
            problems.append(f"suite {name}: 'completions' is not an option (the answers come from the model)")
            continue
        try:
            inspect.signature(SUITES[name].score).bind(None, [], max_new_tokens=1, **options)
        except TypeError as exc:
            problems.append(f"suite {name}: options {sorted(options)} do not fit its score(): {exc}")
    if problems:
        raise MiddoError("evaluate: " + "; ".join(problems))
    for name in suites:
        if SUITES[name].preflight is not None:
            SUITES[name].preflight(**dict((suite_options or {}).get(name, {})))


def pooled_completions(
    lm, items: Mapping[str, list[dict[str, Any]]], max_new_tokens: int, options: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[str]]:
    """Every generative suite's answers from one greedy generation: suite name -> answers to its prompts, in order.

    Each suite builds its prompts with the function its ``score`` uses, so a pooled answer is the one ``score`` would
    generate itself; suites that generate nothing under their options (MMLU's ``loglik``) are left out.
    """
    groups = {}
    for name, suite_items in items.items():
        prompts = SUITES[name].prompts
        built = prompts(suite_items, **options.get(name, {})) if prompts is not None else None
        if built is not None:
            groups[name] = built
    return greedy_generate_pooled(lm, groups, max_new_tokens, desc="+".join(groups) or "generate")


def details_path(out_path: str | Path) -> Path:
    """``metrics/eval.json`` -> ``metrics/eval_details.jsonl``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_details.jsonl")


def evaluate_model(
    model_path: str | Path,
    suites: list[str],
    limit: int | None,
    out_path: str | Path,
    device: str,
    dtype: str,
    max_new_tokens: int,
    seed: int,
    *,
    bootstrap: int,
    suite_options: Mapping[str, Mapping[str, Any]] | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Score one model on several suites and write the metrics JSON and the per-item details.

    Under ``torchrun`` (``shard`` from the environment by default) each process answers every ``world``-th item
    of each suite; results are gathered in item order and scored once, so the files equal a one-process run's.
    The generative suites' items of this process are answered in one pooled call (:func:`pooled_completions`).

    Args:
        model_path: a local HF model folder (e.g. one round's trained model).
        suites: names from :data:`SUITES`.
        limit: items per suite (a seeded subset, the same for every round); None or <= 0 for all.
        out_path: the metrics JSON to write; details go beside it (:func:`details_path`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        max_new_tokens: generation cap for the generative suites.
        seed: selects the subset, and seeds the bootstrap of the average's interval.
        bootstrap: resamples for the average's 95% interval (``eval.bootstrap``).
        suite_options: extra keyword arguments for a suite's ``score`` (``{"mmlu": {"mode": "generate"}}``); only
            the suites in this run use theirs, so one mapping can serve every run.
        shard: this process's share; None reads it from the torchrun environment.

    Returns:
        The metrics written (``accuracy``, ``average``, ``n``, ``interval``) plus ``suites``: each suite's extra
        numbers and seconds (loading and scoring; the pooled generation is ``generation``: its ``prompts`` and
        ``seconds``). ``interval`` holds each suite's Wilson 95% interval and the average's bootstrap one,
        each ``{"low", "high"}`` (:func:`middo.evaluate.stats.intervals`).
        Package versions and the device and dtype the model ran with go to the file's env record.

    Raises:
        MiddoError: an unknown suite name, or a model folder that cannot be loaded.
    """
    from middo.modeling import load_model

    check_suites(suites, suite_options)
    shard = from_env() if shard is None else shard
    lm = load_model(model_path, local_device(device), dtype)
    accuracy: dict[str, float] = {}
    counts: dict[str, int] = {}
    extra: dict[str, dict[str, Any]] = {}
    correct: dict[str, list[bool]] = {}
    rows: list[str] = []
    options = suite_options or {}
    items: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for name in suites:
        start = time.perf_counter()
        items[name] = shard.take(SUITES[name].load(limit, seed))
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    completions = pooled_completions(lm, items, max_new_tokens, options)
    generation = {"prompts": sum(map(len, completions.values())), "seconds": round(time.perf_counter() - start, 2)}
    for name in suites:
        suite = SUITES[name]
        start = time.perf_counter()
        answers = {"completions": completions[name]} if name in completions else {}
        result = suite.score(lm, items[name], max_new_tokens=max_new_tokens, **options.get(name, {}), **answers)
        if shard.log is not None:  # the items this process scored, for the rank report
            shard.log.add(name, [str(r["id"]) for r in result["results"]])
        if shard.world > 1:
            merged = shard.interleave(shard.gather_json(result["results"]))
            result = {**result, **suite.aggregate(merged)}
        accuracy[name] = float(result["accuracy"])
        counts[name] = int(result["n"])
        extra[name] = {k: v for k, v in result.items() if k not in ("accuracy", "n", "results")}
        extra[name]["seconds"] = round(seconds[name] + time.perf_counter() - start, 2)
        correct[name] = [bool(r["correct"]) for r in result["results"]]
        rows.extend(json.dumps({"suite": name, **r}, ensure_ascii=False) for r in result["results"])
    metrics = {
        "accuracy": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "n": counts,
        "interval": intervals(correct, bootstrap, seed),
    }
    write_rank_report("evaluate", shard, device=device_name(lm.device))
    if shard.is_main:
        atomic_write_text(details_path(out_path), "".join(row + "\n" for row in rows))
        env = environment(device=device_name(lm.device), dtype=dtype_name(lm.dtype))
        write_metrics(out_path, metrics, env)
    shard.barrier()
    return {**metrics, "suites": extra, "generation": generation}
