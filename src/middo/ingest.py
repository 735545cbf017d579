"""Bring a user's dataset into the pipeline as round 0, with every rejected record accounted for."""

from __future__ import annotations

import json
from pathlib import Path

from middo.dataio import read_dataset, write_jsonl
from middo.dataio.atomic import atomic_write_text


def import_dataset(
    source: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    fmt: str = "auto",
    split: str = "train",
    limit: int = 0,
) -> dict:
    """Read ``source`` into ``out_dir/train.jsonl`` (+ ``rejects.jsonl``) and write counts to ``metrics_path``.

    Records past ``limit`` are not rejects: they are counted as ``over_limit`` so ``total`` still adds up.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = read_dataset(source, fmt=fmt, split=split, rejects_path=out_dir / "rejects.jsonl")
    records = result.records
    over_limit = max(0, len(records) - limit) if limit else 0
    if over_limit:
        records = records[:limit]
    write_jsonl(records, out_dir / "train.jsonl")
    counts = {**result.counts(), "kept": len(records), "over_limit": over_limit}
    if counts["kept"] + counts["over_limit"] + counts["rejected"] + counts["blank"] != counts["total"]:
        raise AssertionError(f"{source}: counts do not add up: {counts}")
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(metrics_path, json.dumps({"import": counts}, indent=2) + "\n")
    return counts
