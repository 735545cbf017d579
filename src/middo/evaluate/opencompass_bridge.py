"""Turn an OpenCompass summary CSV into middo's metrics JSON, so GPU rounds and CPU rounds diff the same way.

OpenCompass runs in its own virtual environment (it pins numpy and torch versions that break this one), so this
module never imports it: it only reads the ``summary_<timestamp>.csv`` OpenCompass writes, whose columns are
``dataset, version, metric, mode`` and one column of scores (percent) per model, ``-`` where a dataset did not run.

Run: ``python -m middo.evaluate.opencompass_bridge SUMMARY.csv OUT.json [--model ABBR] [--map suite=dataset ...]``
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError

KEY_COLUMNS = ("dataset", "version", "metric", "mode")
# our suite name -> OpenCompass dataset abbr (``dataset`` or ``dataset:metric`` when a dataset has several rows).
# Only datasets that measure the same thing: OpenCompass has no IFBench (IFEval is a different set) and scores
# TruthfulQA generatively, so those two are left for ``--map`` to name explicitly.
DEFAULT_SUITE_MAP = {
    "humaneval": "openai_humaneval",
    "math500": "math-500",
    "gsm8k": "gsm8k",
    "hellaswag": "hellaswag",
}


def _pick_model(header: list[str], model: str | None, csv_path: Path) -> str:
    models = [c for c in header if c not in KEY_COLUMNS]
    if model is not None:
        if model not in models:
            raise MiddoError(f"{csv_path}: no model column '{model}'; columns are {models}")
        return model
    if len(models) != 1:
        raise MiddoError(f"{csv_path}: {len(models)} model columns {models}; pass model= to pick one")
    return models[0]


def convert_summary(
    csv_path: str | Path, out_path: str | Path, suite_map: dict[str, str] | None = None, model: str | None = None
) -> dict:
    """Write ``{"accuracy": {suite: 0..1}, "average", "n": {suite: None}}`` from an OpenCompass summary CSV.

    OpenCompass does not report item counts in its summary, so ``n`` is null for every suite.

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
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or any(k not in rows[0] for k in KEY_COLUMNS):
        raise MiddoError(f"{csv_path}: not an OpenCompass summary (expected columns {', '.join(KEY_COLUMNS)}, ...)")
    header = rows[0]
    col = header.index(_pick_model(header, model, csv_path))
    records = [dict(zip(header, r, strict=False)) | {"_line": i + 2, "_score": r[col]} for i, r in enumerate(rows[1:])]
    present = {r["dataset"] for r in records}
    if suite_map is None:
        suite_map = {s: d for s, d in DEFAULT_SUITE_MAP.items() if d.split(":")[0] in present}
    errors: list[str] = []
    accuracy: dict[str, float] = {}
    for suite, target in suite_map.items():
        dataset, _, metric = target.partition(":")
        hits = [r for r in records if r["dataset"] == dataset and (not metric or r["metric"] == metric)]
        if not hits:
            errors.append(
                f"suite '{suite}': no row with dataset '{dataset}'" + (f", metric '{metric}'" if metric else "")
            )
            continue
        if len(hits) > 1:
            metrics = [r["metric"] for r in hits]
            errors.append(
                f"suite '{suite}': dataset '{dataset}' has rows for metrics {metrics}; map it as 'dataset:metric'"
            )
            continue
        raw = hits[0]["_score"].strip()
        try:
            accuracy[suite] = float(raw) / 100.0
        except ValueError:
            errors.append(
                f"{csv_path}:{hits[0]['_line']}: suite '{suite}': score '{raw}' is not a number (did it run?)"
            )
    if errors:
        raise MiddoError(f"{csv_path}: " + "; ".join(errors))
    if not accuracy:
        raise MiddoError(f"{csv_path}: no suite matched; datasets in the file: {sorted(present)}")
    metrics = {"accuracy": accuracy, "average": sum(accuracy.values()) / len(accuracy), "n": dict.fromkeys(accuracy)}
    atomic_write_text(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m middo.evaluate.opencompass_bridge SUMMARY.csv OUT.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv_path", help="OpenCompass summary_<timestamp>.csv")
    parser.add_argument("out_path", help="metrics JSON to write")
    parser.add_argument("--model", default=None, help="model column (abbr) when the CSV has several")
    parser.add_argument(
        "--map", nargs="*", default=None, metavar="SUITE=DATASET[:METRIC]", help="suite -> OpenCompass dataset"
    )
    args = parser.parse_args(argv)
    suite_map = dict(m.split("=", 1) for m in args.map) if args.map else None
    print(json.dumps(convert_summary(args.csv_path, args.out_path, suite_map, args.model), indent=2))


if __name__ == "__main__":
    main()
