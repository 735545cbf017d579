"""What a round will send the teacher and what it will cost, worked out before a single request is sent.

The plan runs the round's own request logic (:func:`middo.refine.engine.plan_jobs` and
:func:`middo.refine.engine.generate`) against the teacher cache alone: a cached rewrite is parsed and validated as
the real run would, so whether it leads to an answer request, and that request's exact prompt, are known; a rewrite
not yet cached is counted with one answer to follow (an upper bound: the real run asks only for rewrites that pass
validation), whose prompt is estimated with the parent's prompt standing in for the new one. Prompt tokens are the
real prompts through the teacher's chat template (a served teacher's are counted with ``refine.teacher.tokenizer``,
scaled by the ratio of the server's own counts to ours on the cache's history); completion tokens are the mean of the
cache's history for the same operation and step, else ``max_new_tokens``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from middo.errors import MiddoError
from middo.records import Record
from middo.refine import prompts
from middo.refine.engine import generate, plan_jobs
from middo.teachers.base import Sampling
from middo.teachers.cache import CachedTeacher
from middo.teachers.usage import Budget, BudgetExceeded, Price, Usage, paid_in, reply_usage

log = logging.getLogger(__name__)

HISTORY_LIMIT = 5000  # cache entries read for the completion-length history (file order is by hash: a fair sample)
CALIBRATION_LIMIT = 500  # of those, entries re-tokenized to scale a served teacher's prompt counts
STEPS = ("rewrite", "answer")
HEADS = {
    **{(op, "rewrite"): template.split("{", 1)[0] for op, template in prompts.REWRITE.items()},
    ("", "answer"): prompts.ANSWER.split("{", 1)[0],
}


@dataclass(frozen=True)
class PlannedCall:
    """One request the round makes: ``cached`` is its reply when the cache holds one; ``estimated`` marks an answer
    whose prompt is not known yet (its rewrite is not cached), counted with a stand-in prompt."""

    op: str
    step: str
    prompt: str
    cached: str | None = None
    estimated: bool = False


class _CacheOnly:
    """A teacher that answers from the cache and records what it was asked; the misses get no reply, and nothing
    is ever sent (the plan's promise)."""

    def __init__(self, cache: CachedTeacher):
        self.cache = cache
        self.backend, self.model = cache.backend, cache.model
        self.asked: list[tuple[str, str | None]] = []

    def complete(self, batch: list[str], sampling: Sampling) -> list[str | None]:
        replies = self.cache.lookup(batch, sampling)
        self.asked += list(zip(batch, replies))
        return list(replies)


def offline_cache(
    cache_dir: str | Path, identity: Mapping[str, str], prompt_version: str, round_: int
) -> CachedTeacher:
    """The round's teacher cache with no teacher behind it: a miss that reached it would raise, never send."""
    return CachedTeacher(_NoTeacher(), cache_dir, identity, prompt_version, round_=round_)


class _NoTeacher:
    backend = model = "none (plan)"

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        raise AssertionError("a plan sends no request")


def check_budget(plan: dict, price: Price, max_cost: float) -> Budget:
    """The running budget of a round about to start, or a refusal when its plan is already over.

    What this round paid in earlier attempts (replies it sent before it was stopped) counts towards ``max_cost``, so
    a rerun with the same budget does not spend it a second time.

    Raises:
        BudgetExceeded: already paid + the plan's estimate > ``max_cost``; nothing has been sent.
    """
    paid, estimate = plan["paid_so_far"], plan["total"]["cost"]
    if paid + estimate > max_cost:
        raise BudgetExceeded(
            f"round {plan['round']}: estimated teacher cost ${estimate:.4f} for {plan['total']['requests']} requests "
            f"({plan['total']['prompt_tokens']} prompt + {plan['total']['completion_tokens']} completion tokens; "
            f"{plan['total']['cached']} replies cached), plus ${paid:.4f} already paid by this round, is over "
            f"refine.teacher.max_cost ${max_cost:.4f}. Nothing was sent; `middo plan {plan['round']}` shows the "
            "breakdown. Raise max_cost, or lower the work (refine.merge, diagnose thresholds)."
        )
    return Budget(price, max_cost, spent=paid)


def planned_calls(
    jobs: Sequence, by_id: Mapping[str, Record], cache: CachedTeacher, sampling: Sampling, round_: int
) -> list[PlannedCall]:
    """Every request of the round, cached or not, in the order the real run makes them (see the module docstring)."""
    offline = _CacheOnly(cache)
    _, calls = generate(jobs, by_id, offline, sampling, round_)
    out = [PlannedCall(op, step, prompt, reply) for (op, step, _), (prompt, reply) in zip(calls, offline.asked)]
    for job, call in zip(jobs, out):  # the first len(jobs) calls are the rewrites, in job order
        if call.cached is None:
            stand_in = prompts.answer_prompt(by_id[job.rid].prompt_text)
            out.append(PlannedCall(job.op, "answer", stand_in, estimated=True))
    return out


def step_of(prompt: str) -> tuple[str, str] | None:
    """``(operation, step)`` of a cached prompt, read from the templates' opening words (``""`` for an answer's
    operation, which its prompt does not show), or None for a prompt the templates did not make."""
    return next((key for key, head in HEADS.items() if prompt.startswith(head)), None)


def read_history(cache_dir: str | Path, identity: Mapping[str, str], limit: int = HISTORY_LIMIT) -> list[dict]:
    """Up to ``limit`` cache entries of this teacher (same identity) that carry usage: the prompt, its step and
    usage. Unreadable entries are skipped (the cache itself redoes them)."""
    out = []
    for path in sorted(Path(cache_dir).glob("??/*.json")):
        if len(out) >= limit:
            break
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        usage = Usage.from_json(entry.get("usage")) if isinstance(entry, dict) else None
        if usage is None or entry.get("teacher") != dict(identity) or not isinstance(entry.get("prompt"), str):
            continue
        out.append({"prompt": entry["prompt"], "step": step_of(entry["prompt"]), "usage": usage})
    return out


def completion_estimates(history: list[dict], max_new_tokens: int) -> dict[tuple[str, str], float]:
    """Mean completion tokens per ``(operation, step)`` (answers pooled over operations), from ``history``."""
    sums: dict[tuple[str, str], list[int]] = {}
    for h in history:
        if h["step"] is not None:
            sums.setdefault(h["step"], []).append(min(h["usage"].completion_tokens, max_new_tokens))
    return {key: sum(v) / len(v) for key, v in sums.items()}


class TokenCounter:
    """Counts a request's prompt tokens with a local tokenizer through its chat template, as the teacher would."""

    def __init__(self, tokenizer_path: str | Path, system_prompt: str = "", scale: float = 1.0):
        """
        Raises:
            MiddoError: ``tokenizer_path`` is not a local folder.
        """
        from middo.modeling import load_tokenizer

        if not Path(tokenizer_path).is_dir():
            raise MiddoError(
                f"refine.teacher.tokenizer: {tokenizer_path} is not a local folder; the plan counts prompt tokens "
                "with it (build models/base with `dvc repro base_model`, or point it at any tokenizer folder)"
            )
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.system_prompt = system_prompt
        self.scale = scale

    def count(self, texts: Sequence[str], batch: int = 512) -> list[int]:
        from middo.teachers.transformers_backend import encode_prompts

        out: list[int] = []
        for start in range(0, len(texts), batch):
            out += [
                len(ids)
                for ids in encode_prompts(self.tokenizer, list(texts[start : start + batch]), self.system_prompt)
            ]
        return out

    def calibrate(self, history: list[dict], limit: int = CALIBRATION_LIMIT) -> float:
        """Scale our counts to the server's: the ratio of its prompt tokens to ours over up to ``limit`` history
        entries (1.0 without history; a local teacher's own counts give 1.0)."""
        sample = history[:limit]
        ours = sum(self.count([h["prompt"] for h in sample]))
        theirs = sum(h["usage"].prompt_tokens for h in sample)
        self.scale = theirs / ours if sample and ours else 1.0
        return self.scale


def plan_round(
    records: Sequence[Record],
    flags: Mapping[str, set[str]],
    cache: CachedTeacher,
    sampling: Sampling,
    round_: int,
    counter: TokenCounter,
    price: Price | None,
    *,
    merge: str,
    precedence: Sequence[str],
    max_added_fraction: float,
    knn_sim: Mapping[str, float],
    neighbors: Mapping[str, Sequence[str]],
) -> dict:
    """Requests per operation and step, how many are cached, their estimated tokens and cost; sends nothing.

    Args:
        cache: the round's teacher cache; only read.
        counter: counts prompt tokens (calibrated here on the cache's history).
        price: dollars per million tokens, or ``None`` (tokens only).

    Returns:
        ``{"round", "operations": {op: {step: counts}}, "total": counts, "paid_so_far", "scale", "notes"}``; counts
        are ``requests`` (to send), ``upper_bound`` (of those, answers whose rewrite is not cached), ``cached``,
        ``prompt_tokens``, ``completion_tokens`` (estimated, to send) and ``cost`` when ``price`` is set.
        ``paid_so_far`` is what this round already paid (replies it sent in an earlier, stopped attempt).
    """
    by_id = {r.id: r for r in records}
    flags = {axis: set(ids) & by_id.keys() for axis, ids in flags.items()}
    jobs, _, _ = plan_jobs(records, flags, merge, precedence, max_added_fraction, knn_sim, neighbors)
    calls = planned_calls(jobs, by_id, cache, sampling, round_)
    history = read_history(cache.cache_dir, cache.identity)
    scale = counter.calibrate(history)
    means = completion_estimates(history, sampling.max_new_tokens)
    notes = []
    if not history:
        notes.append("no usage history in the cache for this teacher: completions estimated at max_new_tokens")
    to_send, seen, paid = [], set(), Usage(0, 0)
    cached: dict[tuple[str, str], int] = {}
    for call in calls:
        if call.cached is not None:
            cached[call.op, call.step] = cached.get((call.op, call.step), 0) + 1
            if paid_in(call.cached, round_) and reply_usage(call.cached) is not None:
                u = reply_usage(call.cached)
                paid = Usage(paid.prompt_tokens + u.prompt_tokens, paid.completion_tokens + u.completion_tokens)
            continue
        if sampling.greedy and not call.estimated:  # a greedy prompt asked twice in one step is sent once
            if (call.step, call.prompt) in seen:
                continue
            seen.add((call.step, call.prompt))
        to_send.append(call)
    prompt_tokens = [n * scale for n in counter.count([c.prompt for c in to_send])]
    ops: dict[str, dict[str, dict]] = {}
    for call, n_in in zip(to_send, prompt_tokens):
        step_key = (call.op, call.step) if call.step == "rewrite" else ("", "answer")
        n_out = means.get(step_key, float(sampling.max_new_tokens))
        c = ops.setdefault(call.op, {}).setdefault(call.step, _counts())
        c["requests"] += 1
        c["upper_bound"] += call.estimated
        c["prompt_tokens"] += n_in
        c["completion_tokens"] += n_out
    for (op, step), n in cached.items():
        ops.setdefault(op, {}).setdefault(step, _counts())["cached"] += n
    total = _counts()
    for steps in ops.values():
        for c in steps.values():
            for k in total:
                total[k] += c[k]
    for c in [total, *(c for steps in ops.values() for c in steps.values())]:
        c["prompt_tokens"], c["completion_tokens"] = round(c["prompt_tokens"]), round(c["completion_tokens"])
        if price is not None:
            c["cost"] = round(price.cost(Usage(c["prompt_tokens"], c["completion_tokens"])), 6)
    order = [op for op in ("simplify", "diversify", "improve") if op in ops]
    return {
        "round": round_,
        "operations": {op: {s: ops[op][s] for s in STEPS if s in ops[op]} for op in order},
        "total": total,
        "paid_so_far": round(price.cost(paid), 6) if price is not None else None,
        "price": None if price is None else {"input": price.input, "output": price.output},
        "scale": round(scale, 4),
        "history": len(history),
        "notes": notes,
    }


def _counts() -> dict:
    return {"requests": 0, "upper_bound": 0, "cached": 0, "prompt_tokens": 0.0, "completion_tokens": 0.0}


def render_plan(plan: dict) -> str:
    """The plan as a table, one row per operation and step, then the totals and the cost online and in batch."""
    money = plan["price"] is not None
    lines = [
        f"Round {plan['round']}: what refine will send (nothing was sent to plan it)",
        "",
        "| operation | step | requests | of which upper bound | cached | prompt tokens | completion tokens |"
        + (" cost $ |" if money else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if money else ""),
    ]
    rows = [(op, step, c) for op, steps in plan["operations"].items() for step, c in steps.items()]
    for op, step, c in [*rows, ("total", "", plan["total"])]:
        lines.append(
            f"| {op} | {step} | {c['requests']} | {c['upper_bound']} | {c['cached']} | {c['prompt_tokens']} | "
            f"{c['completion_tokens']} |" + (f" {c['cost']:.4f} |" if money else "")
        )
    lines += [
        "",
        "Upper bound: answers to rewrites not cached yet; the run asks only for rewrites that pass validation.",
        f"Prompt tokens scaled by {plan['scale']} (the server's counts over ours on {plan['history']} cached "
        "replies).",
    ]
    if money:
        t = plan["total"]["cost"]
        online = t * 2 if plan.get("mode") == "batch" else t  # a batch plan is priced at the Batch API's half price
        lines += [
            f"Estimated cost: ${online:.4f} online, ${online / 2:.4f} through the Batch API (half price); mode "
            f"{plan.get('mode', 'online')}; already paid by this round: ${plan['paid_so_far']:.4f}.",
        ]
    lines += [f"Note: {n}" for n in plan["notes"]]
    return "\n".join(lines) + "\n"
