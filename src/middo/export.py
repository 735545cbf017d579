"""Export a round's dataset in the layouts other tools train on: Alpaca or ShareGPT JSONL, OpenAI messages JSONL, or
Parquet.

Every export keeps each record's id, lineage and ``meta``, so reading it back with :func:`middo.dataio.read_dataset`
gives the same records; and a ``dataset_info.json`` beside it lets ``llamafactory-cli train --dataset_dir <folder>``
use it as is. (LLaMA-Factory pins ``datasets`` <= 4.0, whose JSON loader needs each ``meta`` key to hold one type
across records; the Parquet export keeps ``meta`` as text and loads whatever it holds.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from middo.dataio import read_records, write_jsonl
from middo.dataio.atomic import atomic_open
from middo.dataio.llamafactory import round_dataset_name, write_dataset_info
from middo.dataio.readers import PARQUET_META_JSON, PARQUET_META_KEY
from middo.errors import MiddoError
from middo.records import Record

# format -> file extension of the default output (distinct, so that every format of a round fits in one folder)
EXTENSIONS = {"alpaca": "jsonl", "sharegpt": "sharegpt.jsonl", "openai": "openai.jsonl", "parquet": "parquet"}
_LINEAGE = ("parent_id", "round", "axis", "op")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


def export_round(
    data_file: str | os.PathLike[str], out_path: str | os.PathLike[str], fmt: str, name: str | None = None
) -> Path:
    """Write the records of ``data_file`` (a round's ``train.jsonl``) to ``out_path`` in ``fmt``, atomically.

    Formats: ``alpaca`` (our JSONL as is), ``sharegpt`` (``conversations`` of human/gpt turns, the history unrolled
    into them, plus ``system``), ``openai`` (``messages`` with role/content, the system prompt first), ``parquet``
    (one row per record, ``history`` a list column, ``meta`` as JSON text). An ``input`` is joined to the last user
    turn the way LLaMA-Factory joins it (``instruction\\ninput``) and also kept as its own field, so it splits back.
    ``dataset_info.json`` beside ``out_path`` gets an entry for it (other entries there are kept).

    Args:
        name: the entry's dataset name; default: the output's file name with ``.`` as ``_`` (``round_1_parquet``).

    Raises:
        MiddoError: ``fmt`` is unknown, or ``data_file`` is missing or not a file the pipeline wrote.
    """
    if fmt not in EXTENSIONS:
        raise MiddoError(f"export: unknown format {fmt!r}; expected one of {', '.join(EXTENSIONS)}")
    records = read_records(data_file)
    out = Path(out_path)
    if fmt == "alpaca":
        write_jsonl(records, out)
    elif fmt == "parquet":
        _write_parquet(records, out)
    else:
        convert = _sharegpt if fmt == "sharegpt" else _openai
        _write_lines((convert(r) for r in records), out)
    name = name or re.sub(r"\W+", "_", out.name)
    write_dataset_info(out.parent, name, out.name, "alpaca" if fmt == "parquet" else fmt, merge=True)
    return out


def export_command(data_dir: str, round_: int, fmt: str, out: str | None) -> Path:
    """``middo export ROUND --format F --out PATH``: export ``data_dir/round_R/train.jsonl``; return the file written.

    The default output is ``exports/round_R.<ext>`` (``jsonl``, ``sharegpt.jsonl``, ``openai.jsonl``, ``parquet``);
    its ``dataset_info.json`` entry is ``middo_round_R`` for Alpaca, ``middo_round_R_<format>`` for the others.

    Raises:
        MiddoError: unknown ``fmt``, or the round has no dataset yet.
    """
    if fmt not in EXTENSIONS:
        raise MiddoError(f"export: unknown format {fmt!r}; expected one of {', '.join(EXTENSIONS)}")
    data_file = Path(data_dir) / f"round_{round_}" / "train.jsonl"
    if not data_file.is_file():
        raise MiddoError(f"{data_file}: no such file; round {round_} has no dataset yet (run the pipeline first)")
    out_path = Path(out) if out else Path("exports") / f"round_{round_}.{EXTENSIONS[fmt]}"
    name = round_dataset_name(round_) + ("" if fmt == "alpaca" else f"_{fmt}")
    return export_round(data_file, out_path, fmt, name=name)


def _extras(record: Record) -> dict[str, Any]:
    """What a conversation layout has no place for: the Alpaca input, lineage and meta (readers keep them)."""
    extra: dict[str, Any] = {"input": record.input} if record.input else {}
    extra.update((k, getattr(record, k)) for k in _LINEAGE)
    if record.meta:
        extra["meta"] = record.meta
    return extra


def _sharegpt(record: Record) -> dict[str, Any]:
    turns = [
        {"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in record.messages() if m["role"] != "system"
    ]
    return {"id": record.id, "conversations": turns, "system": record.system, **_extras(record)}


def _openai(record: Record) -> dict[str, Any]:
    return {"id": record.id, "messages": record.messages(), **_extras(record)}


def _write_lines(objs: Iterable[dict[str, Any]], out: Path) -> None:
    with atomic_open(out, "w") as f:
        for obj in objs:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _write_parquet(records: list[Record], out: Path) -> None:
    """One row per record; ``meta`` differs from row to row, so it is JSON text (a struct column would add nulls)."""
    import polars as pl

    schema = {
        "id": pl.String,
        "instruction": pl.String,
        "input": pl.String,
        "output": pl.String,
        "system": pl.String,
        "history": pl.List(pl.List(pl.String)),
        "parent_id": pl.String,
        "round": pl.Int64,
        "axis": pl.String,
        "op": pl.String,
        "meta": pl.String,
    }
    rows = [{**r.to_dict(), "meta": json.dumps(r.meta, ensure_ascii=False) if r.meta else None} for r in records]
    frame = pl.DataFrame(rows, schema=schema)
    with atomic_open(out, "wb") as f:
        frame.write_parquet(f, metadata={PARQUET_META_KEY: PARQUET_META_JSON})
