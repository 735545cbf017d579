"""Reading what OpenCompass wrote: one run folder (or its summary CSV) becomes the builtin backend's ``eval.json``
(accuracy, n and 95% interval per suite) and ``eval_details.jsonl`` (one line per item, paired on ``(suite, id)``).

Kept apart from :mod:`middo.evaluate.opencompass_bridge` (which writes the config and runs OpenCompass) because it is
pure file reading: a user who ran OpenCompass by hand converts its output with this module alone.

What OpenCompass writes under ``-w WORK -r RUN`` (open-compass/opencompass: ``tasks/openicl_infer.py``,
``tasks/openicl_eval.py``, ``summarizers/default.py``):

- ``RUN/predictions/<model abbr>/<dataset abbr>.json``: ``{"0": {"origin_prompt", "prediction", "gold"}, ...}``;
- ``RUN/results/<model abbr>/<dataset abbr>.json``: the evaluator's scores (percent) and, with
  ``--dump-eval-details``, ``details``: one entry per item, its result under ``correct`` / ``is_correct``;
- ``RUN/summary/summary_<time>.csv``: ``dataset, version, metric, mode, <model abbr>``, ``-`` where a dataset has
  no score.

Run: ``python -m middo.evaluate.opencompass_results RUN_DIR|SUMMARY.csv OUT.json`` (convert what a run left).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError
from middo.evaluate.stats import intervals
from middo.evaluate.suite import details_path
from middo.provenance import environment

KEY_COLUMNS = ("dataset", "version", "metric", "mode")
# convert_summary: our suite name -> OpenCompass dataset abbr (``dataset`` or ``dataset:metric``). Only datasets that
# measure the same thing as a builtin suite: IFEval is not IFBench and OpenCompass's TruthfulQA is generative.
DEFAULT_SUITE_MAP = {
    "humaneval": "openai_humaneval",
    "math500": "math-500",
    "gsm8k": "gsm8k",
    "hellaswag": "hellaswag",
}
# Dataset abbr (what the paper's configs, opencompass_bridge.PAPER_CONFIGS, name their datasets) -> our suite and
# the metric OpenCompass's summary shows.
ABBR_SUITES = {
    "IFEval": ("ifeval", "Prompt-level-strict-accuracy"),
    "gsm8k": ("gsm8k", "accuracy"),
    "math": ("math", "accuracy"),
    "openai_humaneval": ("humaneval", "humaneval_pass@1"),
    "mbpp": ("mbpp", "score"),
    "hellaswag": ("hellaswag", "accuracy"),
    "GPQA_diamond": ("gpqa", "accuracy"),
}
MMLU_PREFIX = "lukaemon_mmlu_"  # MMLU is 57 datasets, one per subject; they make one suite
SUITE_ORDER = ("mmlu", "ifeval", "gsm8k", "math", "humaneval", "mbpp", "hellaswag", "gpqa")
# DefaultSummarizer's METRIC_WHITELIST order: a dataset outside ABBR_SUITES is scored by its first numeric metric here.
METRIC_ORDER = ("score", "auc_score", "accuracy", "humaneval_pass@1", "rouge1", "f1", "exact_match")
CORRECT_KEYS = ("correct", "is_correct", "cascade_correct")  # an item's result, as BaseEvaluator.evaluate reads it
DETAIL_FIELDS = ("pred", "answer", "predictions", "references", "origin_prediction", "completion", "result", "grade")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MiddoError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc


def _value(entry: dict[str, Any], key: str, what: str) -> Any:
    """A detail field; OpenCompass >= 0.4 (entries with ``example_abbr``) lists it per replica: we run n = 1."""
    value = entry[key]
    if "example_abbr" not in entry or not isinstance(value, list):
        return value
    if len(value) != 1:
        raise MiddoError(f"{what}: {len(value)} replicas per item; middo reads runs with n = 1")
    return value[0]


def read_items(details: Any, abbr: str) -> list[dict[str, Any]] | None:
    """``{"id", "correct", ...}`` per item from a results file's ``details``, or None when they carry no result.

    Handles a list (OpenCompass >= 0.4: ``example_abbr`` and one-element lists) and a dict keyed ``"0", "1", ...``
    (``OpenICLEvalTask.format_details``, which adds a ``"type"`` key). AccEvaluator (MMLU, HellaSwag) gives no
    details; OpenCompass then dumps each item's postprocessed prediction and reference, and AccEvaluator's accuracy
    is exactly their string equality, so that is the item's result there.
    """
    if isinstance(details, dict):
        entries = sorted((int(k), v) for k, v in details.items() if str(k).isdigit())
    elif isinstance(details, list):
        entries = list(enumerate(details))
    else:
        return None
    exact = abbr == "hellaswag" or abbr.startswith(MMLU_PREFIX)
    items = []
    for position, entry in entries:
        if not isinstance(entry, dict):
            return None
        what = f"{abbr} item {position}"
        flag = next((_value(entry, k, what) for k in CORRECT_KEYS if k in entry), None)
        if flag is None and exact and "predictions" in entry and "references" in entry:
            flag = str(_value(entry, "predictions", what)) == str(_value(entry, "references", what))
        if flag is None:
            return None
        tail = str(entry.get("example_abbr", "")).rpartition("_")[2]  # "<subdivision>_<index in the dataset>"
        index = int(tail) if tail.isdigit() else position
        fields = {k: _value(entry, k, what) for k in DETAIL_FIELDS if k in entry}
        items.append({"id": f"{abbr}/{index}", "correct": bool(flag), "dataset": abbr, **fields})
    return items or None


def _count_predictions(folder: Path, abbr: str) -> int:
    """Items predicted: ``<abbr>.json``, or the parts ``<abbr>_0.json, <abbr>_1.json, ...`` of a split dataset."""
    parts = [folder / f"{abbr}.json"]
    if not parts[0].is_file():
        parts = []
        while (folder / f"{abbr}_{len(parts)}.json").is_file():
            parts.append(folder / f"{abbr}_{len(parts)}.json")
    if not parts:
        raise MiddoError(f"{folder}: no predictions for {abbr} ({abbr}.json)")
    return sum(len(_load(p)) for p in parts)


def _read_summary(csv_path: Path, model: str | None) -> list[dict[str, Any]]:
    """Rows of an OpenCompass summary CSV with ``_line`` and ``_score`` (the chosen model's column)."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or any(k not in rows[0] for k in KEY_COLUMNS):
        raise MiddoError(f"{csv_path}: not an OpenCompass summary (expected columns {', '.join(KEY_COLUMNS)}, ...)")
    header = rows[0]
    models = [c for c in header if c not in KEY_COLUMNS]
    if model is None and len(models) != 1:
        raise MiddoError(f"{csv_path}: {len(models)} model columns {models}; pass model= to pick one")
    if model is not None and model not in models:
        raise MiddoError(f"{csv_path}: no model column '{model}'; columns are {models}")
    col = header.index(model or models[0])
    return [dict(zip(header, r)) | {"_line": i + 2, "_score": (r + [""] * col)[col]} for i, r in enumerate(rows[1:])]


def convert_results(
    run_dir: str | Path,
    out_path: str | Path,
    seed: int,
    bootstrap: int,
    model_abbr: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``eval.json`` and ``eval_details.jsonl`` from one OpenCompass run folder (``WORK/<timestamp>``).

    Each suite's accuracy is over its items (for MMLU, pooled over the 57 subjects: OpenCompass's ``mmlu-weighted``),
    so it is the proportion its Wilson interval and the paired comparison describe. ``opencompass_summary`` keeps
    each suite as OpenCompass's summary shows it: MMLU there is ``mmlu``, the naive mean over subjects. A dataset
    without per-item results (run without ``--dump-eval-details``) falls back to its summary score over as many items
    as it has predictions; ``notes`` says so.

    Raises:
        MiddoError: no results, a dataset the summary lists without a score, a results file with an ``error`` or
            without its metric, or predictions missing for a fallback (all problems together).
    """
    run_dir = Path(run_dir)
    results = run_dir / "results"
    if model_abbr is None:
        models = sorted(p.name for p in results.iterdir()) if results.is_dir() else []
        if len(models) != 1:
            raise MiddoError(f"{results}: {len(models)} model folders {models}; pass model_abbr to pick one")
        model_abbr = models[0]
    files = sorted((results / model_abbr).glob("*.json"))
    if not files:
        raise MiddoError(f"{results / model_abbr}: no results; did OpenCompass finish? (its logs: {run_dir / 'logs'})")
    errors: list[str] = []
    notes: dict[str, list[str]] = {}
    summaries = sorted((run_dir / "summary").glob("summary_*.csv"))
    if summaries:
        for row in _read_summary(summaries[-1], model_abbr):
            if row["_score"].strip() == "-" and not (results / model_abbr / f"{row['dataset']}.json").is_file():
                errors.append(f"{row['dataset']}: no score (see {run_dir / 'logs'})")
    correct: dict[str, list[bool]] = {}  # per item (a fallback dataset: round(score * n) of its n)
    hits: dict[str, float] = {}  # items right (a fallback dataset: score * n, unrounded)
    scores: dict[str, list[float]] = {}  # each dataset's own score, as OpenCompass reports it
    metric: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for path in files:
        abbr, result = path.stem, _load(path)
        suite, name = ("mmlu", "accuracy") if abbr.startswith(MMLU_PREFIX) else ABBR_SUITES.get(abbr, (abbr, None))
        numeric = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        name = name or next((m for m in METRIC_ORDER if m in numeric), numeric[0] if numeric else None)
        if "error" in result or name not in result:
            errors.append(f"{path}: {result.get('error') or f'no metric {name!r}'}")
            continue
        score = float(result[name]) / 100
        items = read_items(result.get("details"), abbr)
        if items is not None and abs(sum(i["correct"] for i in items) / len(items) - score) > 1e-6:
            notes.setdefault(suite, []).append(f"{abbr}: per-item results disagree with its {name}; used the latter")
            items = None
        if items is None:
            try:
                n = _count_predictions(run_dir / "predictions" / model_abbr, abbr)
            except MiddoError as exc:
                errors.append(str(exc))
                continue
            right = round(score * n)
            flags, total = [True] * right + [False] * (n - right), score * n
            notes.setdefault(suite, []).append(
                f"{abbr}: no per-item results (run without --dump-eval-details?): its {name} over its {n} "
                f"predictions, interval from {right}/{n}"
            )
        else:
            flags = [i["correct"] for i in items]
            total = float(sum(flags))
            rows += [{"suite": suite, **i} for i in items]
        if not flags:
            errors.append(f"{path}: no items")
            continue
        correct.setdefault(suite, []).extend(flags)
        hits[suite] = hits.get(suite, 0.0) + total
        scores.setdefault(suite, []).append(score)
        metric[suite] = name if suite != "mmlu" else "accuracy, pooled over subjects"
    if errors:
        raise MiddoError(f"{run_dir}: " + "; ".join(errors))

    def order(suite: str) -> tuple[int, str]:
        return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite)

    suites = sorted(correct, key=order)
    rows.sort(key=lambda r: order(r["suite"]))  # stable: each dataset's items stay in order
    accuracy = {s: hits[s] / len(correct[s]) for s in suites}
    metrics = {
        "accuracy": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "n": {s: len(correct[s]) for s in suites},
        "interval": intervals({s: correct[s] for s in suites}, bootstrap, seed),
        "metric": {s: metric[s] for s in suites},
        "opencompass_summary": {s: sum(scores[s]) / len(scores[s]) for s in suites},
        "backend": "opencompass",
        **({"notes": {s: "; ".join(notes[s]) for s in suites if s in notes}} if notes else {}),
        "env": env or environment(device="see opencompass", dtype="auto"),
    }
    atomic_write_text(details_path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return metrics


def convert_summary(
    csv_path: str | Path, out_path: str | Path, suite_map: dict[str, str] | None = None, model: str | None = None
) -> dict:
    """Write ``{"accuracy": {suite: 0..1}, "average", "n": {suite: None}}`` from an OpenCompass summary CSV.

    OpenCompass does not report item counts in its summary, so ``n`` is null for every suite (prefer
    :func:`convert_results` on the run folder: it has counts, intervals and per-item details).

    Args:
        csv_path: ``outputs/.../summary/summary_<timestamp>.csv``.
        out_path: the metrics JSON to write (atomically).
        suite_map: our suite name -> OpenCompass dataset (``"gsm8k"``) or dataset and metric
            (``"IFEval:Prompt-level-strict-accuracy"``); default: :data:`DEFAULT_SUITE_MAP` restricted to the datasets
            present in the CSV.
        model: which model column to read when the CSV has several.

    Returns:
        The metrics written.

    Raises:
        MiddoError: a missing column, dataset or metric, an ambiguous dataset, or a score that is not a number
            (all problems reported together).
    """
    csv_path = Path(csv_path)
    records = _read_summary(csv_path, model)
    present = {r["dataset"] for r in records}
    if suite_map is None:
        suite_map = {s: d for s, d in DEFAULT_SUITE_MAP.items() if d.split(":")[0] in present}
    errors: list[str] = []
    accuracy: dict[str, float] = {}
    for suite, target in suite_map.items():
        dataset, _, name = target.partition(":")
        rows = [r for r in records if r["dataset"] == dataset and (not name or r["metric"] == name)]
        if not rows:
            errors.append(f"suite '{suite}': no row with dataset '{dataset}'" + (f", metric '{name}'" if name else ""))
            continue
        if len(rows) > 1:
            found = [r["metric"] for r in rows]
            errors.append(
                f"suite '{suite}': dataset '{dataset}' has rows for metrics {found}; map it as 'dataset:metric'"
            )
            continue
        raw = rows[0]["_score"].strip()
        try:
            accuracy[suite] = float(raw) / 100.0
        except ValueError:
            line = rows[0]["_line"]
            errors.append(f"{csv_path}:{line}: suite '{suite}': score '{raw}' is not a number (did it run?)")
    if errors:
        raise MiddoError(f"{csv_path}: " + "; ".join(errors))
    if not accuracy:
        raise MiddoError(f"{csv_path}: no suite matched; datasets in the file: {sorted(present)}")
    metrics = {"accuracy": accuracy, "average": sum(accuracy.values()) / len(accuracy), "n": dict.fromkeys(accuracy)}
    atomic_write_text(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m middo.evaluate.opencompass_results RUN_DIR|SUMMARY.csv OUT.json``."""
    from middo.config import BaseConfig, EvalConfig

    parser = argparse.ArgumentParser(description="Convert an OpenCompass run folder or summary CSV to eval.json.")
    parser.add_argument("source", help="an OpenCompass run folder (WORK/<timestamp>) or its summary_<timestamp>.csv")
    parser.add_argument("out_path", help="metrics JSON to write (a run folder also writes <stem>_details.jsonl)")
    parser.add_argument("--model", default=None, help="model abbr when the run has several")
    parser.add_argument("--map", nargs="*", default=None, metavar="SUITE=DATASET[:METRIC]", help="CSV: suite map")
    parser.add_argument("--seed", type=int, default=BaseConfig().seed, help="run folder: the bootstrap's seed")
    parser.add_argument("--bootstrap", type=int, default=EvalConfig().bootstrap, help="run folder: resamples")
    args = parser.parse_args(argv)
    if Path(args.source).is_dir():
        result = convert_results(args.source, args.out_path, args.seed, args.bootstrap, model_abbr=args.model)
    else:
        suite_map = dict(m.split("=", 1) for m in args.map) if args.map else None
        result = convert_summary(args.source, args.out_path, suite_map, args.model)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
