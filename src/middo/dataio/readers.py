"""Read a user's dataset (Alpaca, ShareGPT or OpenAI records in JSON / JSONL, Parquet, or a ``save_to_disk`` folder).

A file that cannot be used at all raises :class:`DatasetError`; a bad record goes to the rejects with its reason,
so ``records + rejects + blank == total`` always holds and nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from middo.dataio.atomic import atomic_open
from middo.dataio.schema import SCHEMAS, RecordError, build_record, detect_schema, type_name
from middo.errors import MiddoError
from middo.records import Record

FORMATS = ("auto", *SCHEMAS, "parquet", "hf_disk")
MAX_RAW = 2000
HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_BOM = b"\xef\xbb\xbf"
_JSON_WS = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")  # what errors="surrogateescape" turns undecodable bytes into
_EXPECTED_SOURCE = "expected a .json / .jsonl / .parquet file or a folder written by datasets' save_to_disk"
# Parquet key-value metadata that middo's export sets when its ``meta`` column holds JSON text (meta varies per row,
# which a struct column cannot hold without adding nulls).
PARQUET_META_KEY = "middo.meta"
PARQUET_META_JSON = "json"


class DatasetError(MiddoError):
    """The dataset as a whole cannot be read; the message names the file, where, and what was expected."""


class RecordAdapter(Protocol):
    """Renames each object's keys to the schema's before the field rules (``apply``: a LLaMA-Factory entry's
    ``columns``), and a reject reason's field names back to the source's (``explain``)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def explain(self, reason: str) -> str: ...


@dataclass(frozen=True)
class Reject:
    """One record that was not imported, and why; ``line`` is the file line (JSON / JSONL) or row (tables)."""

    source: str
    line: int
    reason: str
    raw: str
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReadResult:
    """The records read, the rejects with reasons, and the counts that prove nothing went missing."""

    records: list[Record]
    rejects: list[Reject] = field(default_factory=list)
    total: int = 0
    blank: int = 0
    source: str = ""
    fmt: str = ""
    container: str = ""

    def counts(self) -> dict[str, int]:
        return {"read": len(self.records), "rejected": len(self.rejects), "blank": self.blank, "total": self.total}

    def reasons(self) -> dict[str, int]:
        """Rejects per kind (``bad_json``, ``wrong_type``, ``duplicate_id``, ...), for metrics and reports."""
        return dict(Counter(r.kind for r in self.rejects))


@dataclass
class _Item:
    """One line / array item / row, parsed or not, before the field rules run."""

    line: int
    where: str
    raw: Any = None
    obj: Any = None
    error: RecordError | None = None
    blank: bool = False


def read_dataset(
    path: str | os.PathLike[str],
    fmt: str = "auto",
    split: str = "train",
    rejects_path: str | os.PathLike[str] | None = None,
    adapter: RecordAdapter | None = None,
) -> ReadResult:
    """Read every record of ``path``, keeping each unusable record as a reject with its reason.

    The container comes from the path (folder -> ``hf_disk``, ``.parquet``, ``.jsonl`` / ``.ndjson``, ``.json``
    holding an array or JSON Lines; other names are sniffed). The record schema comes from ``fmt``, or with
    ``"auto"`` from the first record's keys. ``fmt="parquet"`` / ``"hf_disk"`` force the container instead.

    Args:
        path: dataset file or ``save_to_disk`` folder.
        fmt: one of ``auto``, ``alpaca``, ``sharegpt``, ``openai``, ``parquet``, ``hf_disk``.
        split: split to read when the folder holds a ``DatasetDict``.
        rejects_path: where to write the rejects as JSONL; written (atomically) even when there are none.
        adapter: renames each object's keys before the field rules (and reject reasons back to the source's names).

    Raises:
        DatasetError: the file is missing, empty, not UTF-8, not parseable as a whole, or not a dataset.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown fmt {fmt!r}; expected one of {', '.join(FORMATS)}")
    container = _container(path, fmt)
    readers = {"jsonl": _jsonl_items, "json": _json_array_items, "parquet": _parquet_items}
    items = _hf_items(path, split) if container == "hf_disk" else readers[container](path)
    result = _collect(items, fmt if fmt in SCHEMAS else "auto", str(path), adapter)
    result.container = container
    _check_usable(result, path, container)
    if rejects_path is not None:
        with atomic_open(rejects_path, "w") as f:
            for reject in result.rejects:
                f.write(json.dumps(reject.to_dict(), ensure_ascii=False) + "\n")
    return result


def _container(path: Path, fmt: str) -> str:
    """Which reader to use: from ``fmt`` when it names a container, else from the path and the first bytes."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; {_EXPECTED_SOURCE}")
    if path.is_dir():
        if fmt == "parquet":
            raise DatasetError(f"{path}: is a directory; fmt='parquet' expects a Parquet file")
        if not any((path / marker).is_file() for marker in HF_MARKERS):
            raise DatasetError(
                f"{path}: is a directory but not a dataset saved with save_to_disk (it has none of "
                f"{', '.join(HF_MARKERS)}); {_EXPECTED_SOURCE}"
            )
        return "hf_disk"
    if fmt == "hf_disk":
        raise DatasetError(f"{path}: is a file; fmt='hf_disk' expects a folder written by datasets' save_to_disk")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        expected = "a Parquet file with at least one row" if suffix == ".parquet" else "at least one JSON record"
        raise DatasetError(f"{path}: file is empty; expected {expected}")
    if fmt == "parquet" or suffix == ".parquet":
        return "parquet"
    head = _head(path)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head[:2]:
        raise DatasetError(
            f"{path}: looks like UTF-16 (byte-order mark or NUL bytes at the start); expected UTF-8 text"
        )
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix != ".json" and head.startswith(b"PAR1"):
        return "parquet"
    first = head.removeprefix(_BOM).lstrip(b" \t\r\n")[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        _reject_single_object(path)
        return "jsonl"
    if not first:
        raise DatasetError(f"{path}: file has only whitespace; expected at least one JSON record")
    if suffix == ".json":
        raise DatasetError(
            f"{path}: top-level JSON starts with {first.decode('latin-1')!r}; expected a JSON array "
            "of records ('[') or one JSON object per line"
        )
    raise DatasetError(
        f"{path}: cannot tell the format from the name or the first bytes; {_EXPECTED_SOURCE}, "
        f"or pass fmt= one of {', '.join(FORMATS[1:])}"
    )


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """The start of the file up to its first non-whitespace byte (or ``size`` bytes past it)."""
    head = b""
    with path.open("rb") as f:
        while chunk := f.read(size):
            head += chunk
            if head.removeprefix(_BOM).strip(b" \t\r\n"):
                break
    return head


def _reject_single_object(path: Path) -> None:
    """A ``{``-first file is JSON Lines, unless the whole file is one object (a dict of lists, say)."""
    text = path.read_bytes().removeprefix(_BOM).decode("utf-8", "surrogateescape")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return  # several values (JSON Lines) or broken lines: the line reader reports each one
    keys = ", ".join(list(obj)[:8])
    raise DatasetError(
        f"{path}: top-level JSON is a single object (keys: {keys}); expected an array of records "
        "or one JSON object per line"
    )


def _jsonl_items(path: Path) -> Iterator[_Item]:
    """One item per line; lines are decoded one by one so a bad byte costs one record, not the file."""
    decoder = json.JSONDecoder(strict=False)
    with path.open("rb") as f:
        for n, data in enumerate(f, 1):
            if n == 1:
                data = data.removeprefix(_BOM)
            data = data.removesuffix(b"\n").removesuffix(b"\r")
            where = f"line {n}"
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                error = RecordError(
                    "bad_utf8",
                    f"invalid UTF-8 byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line; expected UTF-8 text",
                )
                yield _Item(n, where, data.decode("utf-8", "backslashreplace"), error=error)
                continue
            if not text.strip(" \t\r"):
                yield _Item(n, where, blank=True)
                continue
            try:
                yield _Item(n, where, text, decoder.decode(text))
            except json.JSONDecodeError as e:
                error = RecordError(
                    "bad_json", f"invalid JSON: {_json_msg(e)} at column {e.colno}; expected one JSON object per line"
                )
                yield _Item(n, where, text, error=error)


def _json_array_items(path: Path) -> Iterator[_Item]:
    """Items of a top-level JSON array, each with the file line it starts on.

    The array is walked item by item (``raw_decode``) rather than loaded at once, so rejects can name a line and
    undecodable bytes inside one item reject that item only.
    """
    text = path.read_bytes().removeprefix(_BOM).decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder(strict=False)
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise DatasetError(f"{path}: top-level JSON is not an array; expected a JSON array of records")
    pos = _skip_ws(text, pos + 1)
    line, counted = 1, 0
    n = 0
    while not text.startswith("]", pos):
        n += 1
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno}, column {e.colno}"
            raise DatasetError(
                f"{path}: {where}: invalid JSON in item {n} ({_json_msg(e)}); expected a JSON array of records"
            ) from None
        raw = text[pos:end]
        where = f"line {line} (item {n})"
        bad = _ESCAPED_BYTE.search(raw)
        if bad:
            byte_line = line + raw.count("\n", 0, bad.start())
            error = RecordError(
                "bad_utf8",
                f"invalid UTF-8 byte 0x{ord(bad.group()) - 0xDC00:02x} on line {byte_line}; expected UTF-8 text",
            )
            yield _Item(
                line, where, raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), error=error
            )
        else:
            yield _Item(line, where, raw, obj)
        pos = _skip_ws(text, end)
        if pos >= len(text):
            raise DatasetError(
                f"{path}: line {_line_at(text, pos)}: JSON array ends after item {n} without ']' "
                "(truncated file?); expected ',' or ']'"
            )
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif text[pos] != "]":
            raise DatasetError(
                f"{path}: line {_line_at(text, pos)}: unexpected {text[pos]!r} after item {n}; expected ',' or ']'"
            )
    if _skip_ws(text, pos + 1) < len(text):
        raise DatasetError(
            f"{path}: line {_line_at(text, _skip_ws(text, pos + 1))}: extra data after the closing "
            "']'; expected a single JSON array"
        )


def _json_msg(error: json.JSONDecodeError) -> str:
    """The decoder's message without its dangling "at" (the position is reported separately)."""
    return error.msg.removesuffix(" at")


def _skip_ws(text: str, pos: int) -> int:
    return _JSON_WS.match(text, pos).end()


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parquet_items(path: Path) -> Iterator[_Item]:
    """One item per row; a null cell means the field is absent (columns are shared by all rows)."""
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DatasetError(
            f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); expected a Parquet "
            "table with one record per row"
        ) from e
    rows = frame.iter_rows(named=True)
    if pl.read_parquet_metadata(path).get(PARQUET_META_KEY) == PARQUET_META_JSON:
        rows = map(_decode_meta, rows)
    yield from _row_items(rows)


def _decode_meta(row: dict[str, Any]) -> dict[str, Any]:
    """Our export's ``meta`` JSON text back to an object; text that is not one stays as it is (then it is kept as an
    unknown field, not lost)."""
    text = row.get("meta")
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return row
        if isinstance(value, dict):
            return {**row, "meta": value}
    return row


def _hf_items(path: Path, split: str) -> Iterator[_Item]:
    """Rows of a ``save_to_disk`` folder; a ``DatasetDict`` needs ``split`` to say which one."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(
            f"{path}: cannot load with datasets.load_from_disk ({type(e).__name__}: {e}); expected "
            "a folder written by save_to_disk"
        ) from e
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DatasetError(f"{path}: split {split!r} not found; expected one of {', '.join(sorted(dataset))}")
        dataset = dataset[split]
    yield from _row_items(dataset)


def _row_items(rows: Iterable[dict[str, Any]]) -> Iterator[_Item]:
    for n, row in enumerate(rows, 1):
        row = {k: v for k, v in row.items() if v is not None}
        yield _Item(n, f"row {n}", row, row)


def _collect(items: Iterable[_Item], schema: str, source: str, adapter: RecordAdapter | None = None) -> ReadResult:
    """Apply the field rules to every item; ``auto`` resolves to the schema of the first object seen."""
    result = ReadResult(records=[], source=source)
    seen: dict[str, str] = {}
    for item in items:
        result.total += 1
        if item.blank:
            result.blank += 1
            continue
        try:
            if item.error is not None:
                raise item.error
            if not isinstance(item.obj, dict):
                raise RecordError("not_object", f"expected a JSON object, got {type_name(item.obj)}")
            obj = item.obj if adapter is None else adapter.apply(item.obj)
            if schema == "auto":
                schema = detect_schema(obj)
            record = build_record(obj, schema)
            if record.id in seen:
                if obj.get("id") is None:  # the id was derived from the content: the same record again
                    raise RecordError("duplicate", f"exact duplicate of {seen[record.id]}")
                raise RecordError(
                    "duplicate_id",
                    f"duplicate id {record.id!r} (first seen at {seen[record.id]}); expected unique ids",
                )
            seen[record.id] = item.where
            result.records.append(record)
        except RecordError as e:
            reason = str(e) if adapter is None else adapter.explain(str(e))
            result.rejects.append(Reject(source, item.line, f"{item.where}: {reason}", _raw_text(item.raw), e.kind))
    result.fmt = "alpaca" if schema == "auto" else schema
    return result


def _raw_text(raw: Any) -> str:
    """The rejected input as text, cut to ``MAX_RAW`` characters and safe to write as UTF-8."""
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return text[:MAX_RAW].encode("utf-8", "backslashreplace").decode("utf-8")


def _check_usable(result: ReadResult, path: Path, container: str) -> None:
    """Whole-file failures that only show after reading: no records at all, or no line that is UTF-8."""
    if result.total == 0:
        what = {"json": "JSON array is empty", "parquet": "table has no rows", "hf_disk": "dataset has no rows"}
        raise DatasetError(f"{path}: {what.get(container, 'file is empty')}; expected at least one record")
    if result.blank == result.total:
        raise DatasetError(f"{path}: file has only blank lines; expected at least one JSON record")
    undecodable = [r for r in result.rejects if r.kind == "bad_utf8"]
    if len(undecodable) == result.total - result.blank:
        raise DatasetError(
            f"{path}: not UTF-8 text: no record decodes (first bad byte: {undecodable[0].reason}); expected UTF-8 text"
        )
    if len(result.records) + len(result.rejects) + result.blank != result.total:
        raise AssertionError(f"{path}: counts do not add up: {result.counts()}")
