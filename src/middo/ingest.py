"""Bring a user's dataset into the pipeline as round 0, with every rejected record accounted for."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from middo.dataio import read_dataset, write_jsonl
from middo.dataio.llamafactory import (
    DATASET_INFO,
    find_dataset_info,
    open_entry,
    round_dataset_name,
    write_dataset_info,
)
from middo.dataio.readers import ReadResult, Reject
from middo.errors import MiddoError
from middo.provenance import environment, write_metrics

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
    entry: str = "",
) -> dict:
    """Read ``source`` into ``out_dir/train.jsonl`` (+ ``rejects.jsonl``) and write counts to ``metrics_path``.

    ``source`` may be a LLaMA-Factory ``dataset_info.json`` (or its folder): ``entry`` then names the dataset to
    read (may be empty when there is one), whose file, formatting and column names come from the entry.
    ``out_dir`` also gets a ``dataset_info.json`` naming ``train.jsonl`` as ``middo_round_0``, so LLaMA-Factory can
    train on the folder as is. Records past ``limit`` (0: no limit) are not rejects: they are counted as
    ``over_limit`` so ``total`` still adds up. ``metrics_path`` holds ``{"import": counts}`` (``counts`` also has
    ``rejects_by_reason``), its ``env/`` neighbour the versions (:func:`middo.provenance.write_metrics`).

    Raises:
        DatasetError: the file cannot be read as a dataset at all, or the entry cannot be used (see
            :func:`~middo.dataio.llamafactory.open_entry`).
        MiddoError: no record was kept. ``rejects.jsonl`` is still written so the user can see why, but no
            ``train.jsonl`` or ``dataset_info.json`` is (stale ones are removed): an empty round 0 must not look
            like a valid dataset. Also: ``entry`` is set but ``source`` is no ``dataset_info.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_path = out_dir / "rejects.jsonl"
    result, label = _read(source, fmt, split, rejects_path, entry)
    records = result.records
    if not records:
        (out_dir / "train.jsonl").unlink(missing_ok=True)
        (out_dir / DATASET_INFO).unlink(missing_ok=True)
        raise MiddoError(_nothing_kept(label, result.total - result.blank, result.rejects, rejects_path))
    over_limit = max(0, len(records) - limit) if limit else 0
    if over_limit:
        records = records[:limit]
    write_jsonl(records, out_dir / "train.jsonl")
    write_dataset_info(out_dir, round_dataset_name(0), "train.jsonl")
    counts = {**result.counts(), "kept": len(records), "over_limit": over_limit}
    if counts["kept"] + counts["over_limit"] + counts["rejected"] + counts["blank"] != counts["total"]:
        raise AssertionError(f"{source}: counts do not add up: {counts}")
    counts["rejects_by_reason"] = rejects_by_reason(result.rejects)
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics_path, {"import": counts}, environment(device="n/a", dtype="n/a"))
    return counts


def _read(source: str | Path, fmt: str, split: str, rejects_path: Path, entry: str) -> tuple[ReadResult, str]:
    """Read ``source``, through its LLaMA-Factory entry when it is a ``dataset_info.json``; and how to name it."""
    info = find_dataset_info(source)
    if info is None:
        if entry:
            raise MiddoError(
                f"{source}: entry {entry!r} given, but this is not a LLaMA-Factory {DATASET_INFO} (nor a folder "
                f"holding one); point the source at the {DATASET_INFO}, or leave the entry empty"
            )
        return read_dataset(source, fmt=fmt, split=split, rejects_path=rejects_path), str(source)
    found = open_entry(info, entry)
    if fmt not in ("auto", found.schema):
        raise MiddoError(
            f"{info}: entry {found.name!r} has formatting {found.schema!r} but the format given is {fmt!r}; "
            "use auto (the entry says the format)"
        )
    result = read_dataset(found.file, fmt=found.schema, rejects_path=rejects_path, adapter=found.columns)
    return result, f"{found.file} (entry {found.name!r} of {info})"


def _nothing_kept(source: str | Path, n: int, rejects: Sequence[Reject], rejects_path: Path) -> str:
    """``<source>: 0 of 12 records kept; rejects: 10 x '...', 2 x '...' (see <rejects_path>)``."""
    reasons = list(rejects_by_reason(rejects).items())
    named = ", ".join(f"{count} x {reason!r}" for reason, count in reasons[:TOP_REASONS])
    more = f", and {len(reasons) - TOP_REASONS} more reason(s)" if len(reasons) > TOP_REASONS else ""
    return f"{source}: 0 of {n} records kept; rejects: {named}{more} (see {rejects_path})"
