"""Write records as JSON Lines, the one format every stage hands to the next, and read them back strictly."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from middo.dataio.atomic import atomic_open
from middo.dataio.readers import DatasetError, read_dataset
from middo.records import Record


def write_jsonl(records: Iterable[Record], path: str | os.PathLike[str]) -> int:
    """Write one ``Record.to_json()`` per line, atomically, and return how many records were written.

    Raises:
        UnicodeEncodeError: a text field holds a lone surrogate (the old file at ``path`` is left as it was).
    """
    n = 0
    with atomic_open(path, "w") as f:
        for record in records:
            f.write(record.to_json())
            f.write("\n")
            n += 1
    return n


def read_records(path: str | os.PathLike[str], allow_empty: bool = False) -> list[Record]:
    """Read a JSONL file that this pipeline wrote, where any bad line means the file is corrupt.

    Unlike :func:`read_dataset`, nothing is set aside: a stage must not silently train on fewer records than the
    previous stage wrote, so rejects raise instead.

    Args:
        path: a file written by :func:`write_jsonl`.
        allow_empty: return ``[]`` for an empty file (e.g. a stage that flagged nothing) instead of raising.

    Raises:
        DatasetError: the file is missing, empty (unless ``allow_empty``), or has any line that is not a record.
    """
    path = Path(path)
    if allow_empty and path.is_file() and path.stat().st_size == 0:
        return []
    result = read_dataset(path, fmt="alpaca")
    if result.rejects:
        shown = "; ".join(r.reason for r in result.rejects[:3])
        raise DatasetError(
            f"{path}: {len(result.rejects)} of {result.total} lines are not valid records ({shown}); "
            "expected a file written by write_jsonl"
        )
    return result.records
