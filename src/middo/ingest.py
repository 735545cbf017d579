"""Bring a user's dataset into the pipeline as round 0, with every rejected record accounted for."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from middo.dataio import read_dataset, write_jsonl
from middo.dataio.atomic import atomic_write_text
from middo.dataio.readers import Reject
from middo.errors import MiddoError
from middo.provenance import environment

TOP_REASONS = 3  # rejection reasons named in the error when nothing is kept

# the parts of a reject reason that differ record by record (where it is, which id); stripped so rejects group
_WHERE = re.compile(r"^(?:line|row) \d+(?: \(item \d+\))?: ")
_INDEX = re.compile(r"\[\d+\]")
_NUMBERED = re.compile(r"\b(offset|byte|column|line|item) \d+")
_DUPLICATE = re.compile(r"^duplicate id .*? \(first seen at [^)]*\)")
_EXACT = re.compile(r"^exact duplicate of .*$")


def reason_key(reject: Reject) -> str:
    """A reject's reason without its location, so ``rejects_by_reason`` counts causes, not lines.

    ``line 3: field 'messages[2].content': expected str, got list`` -> ``field 'messages[i].content': expected str,
    got list``.
    """
    text = _WHERE.sub("", reject.reason, count=1)
    text = _DUPLICATE.sub("duplicate id", text)
    text = _EXACT.sub("exact duplicate of an earlier record", text)
    text = _INDEX.sub("[i]", text)
    return _NUMBERED.sub(r"\1 N", text)


def rejects_by_reason(rejects: Sequence[Reject]) -> dict[str, int]:
    """Reject counts per :func:`reason_key`, most frequent first (ties in order of first appearance)."""
    return dict(Counter(reason_key(r) for r in rejects).most_common())


def import_dataset(
    source: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    fmt: str,
    split: str,
    limit: int,
) -> dict:
    """Read ``source`` into ``out_dir/train.jsonl`` (+ ``rejects.jsonl``) and write counts to ``metrics_path``.

    Records past ``limit`` (0: no limit) are not rejects: they are counted as ``over_limit`` so ``total`` still
    adds up. ``metrics_path`` holds ``{"import": counts, "env": versions}``; ``counts`` also has
    ``rejects_by_reason``.

    Raises:
        DatasetError: the file cannot be read as a dataset at all.
        MiddoError: no record was kept. ``rejects.jsonl`` is still written so the user can see why, but no
            ``train.jsonl`` is (a stale one is removed): an empty round 0 must not look like a valid dataset.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_path = out_dir / "rejects.jsonl"
    result = read_dataset(source, fmt=fmt, split=split, rejects_path=rejects_path)
    records = result.records
    if not records:
        (out_dir / "train.jsonl").unlink(missing_ok=True)
        raise MiddoError(_nothing_kept(source, result.total - result.blank, result.rejects, rejects_path))
    over_limit = max(0, len(records) - limit) if limit else 0
    if over_limit:
        records = records[:limit]
    write_jsonl(records, out_dir / "train.jsonl")
    counts = {**result.counts(), "kept": len(records), "over_limit": over_limit}
    if counts["kept"] + counts["over_limit"] + counts["rejected"] + counts["blank"] != counts["total"]:
        raise AssertionError(f"{source}: counts do not add up: {counts}")
    counts["rejects_by_reason"] = rejects_by_reason(result.rejects)
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    metrics = {"import": counts, "env": environment(device="n/a", dtype="n/a")}
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return counts


def _nothing_kept(source: str | Path, n: int, rejects: Sequence[Reject], rejects_path: Path) -> str:
    """``<source>: 0 of 12 records kept; rejects: 10 x '...', 2 x '...' (see <rejects_path>)``."""
    reasons = list(rejects_by_reason(rejects).items())
    named = ", ".join(f"{count} x {reason!r}" for reason, count in reasons[:TOP_REASONS])
    more = f", and {len(reasons) - TOP_REASONS} more reason(s)" if len(reasons) > TOP_REASONS else ""
    return f"{source}: 0 of {n} records kept; rejects: {named}{more} (see {rejects_path})"
