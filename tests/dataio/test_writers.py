"""JSONL writer: what is written reads back as the same records, lineage and meta included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middo.dataio import DatasetError, read_dataset, read_records, write_jsonl
from middo.records import Record

GOOD = Path(__file__).resolve().parents[1] / "assets" / "datasets"

RECORDS = [
    Record(id="s1", instruction="Add 2 and 3.", output="5", meta={"category": "math", "n": [1, 2]}),
    Record(
        id="s2",
        instruction="Écris 🙂",
        input="ctx\twith tab",
        output="你好\nline two",
        system="Be kind.",
        history=(("Hi", "Hello"), ("How are you?", "Fine.")),
        parent_id="s0",
        round=3,
        axis="diversity",
        op="diversify",
    ),
]


def test_round_trip(tmp_path):
    path = tmp_path / "train.jsonl"
    assert write_jsonl(RECORDS, path) == 2
    back = read_records(path)
    assert back == RECORDS
    assert [r.meta for r in back] == [r.meta for r in RECORDS]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["s1", "s2"]
    write_jsonl(back, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()  # byte-identical on the second pass


@pytest.mark.parametrize("name", ["alpaca.json", "sharegpt.json", "openai.jsonl"])
def test_imported_datasets_round_trip(tmp_path, name):
    records = read_dataset(GOOD / name).records
    write_jsonl(records, tmp_path / "out.jsonl")
    back = read_records(tmp_path / "out.jsonl")
    assert back == records and [r.meta for r in back] == [r.meta for r in records]


def test_read_records_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(RECORDS, path)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"id": "x", "instruction": "q"}\n')
    with pytest.raises(DatasetError, match=r"train\.jsonl: 1 of 3 lines are not valid records \(line 3: missing "):
        read_records(path)


def test_empty_output(tmp_path):
    path = tmp_path / "flagged.jsonl"
    assert write_jsonl([], path) == 0
    assert path.read_bytes() == b""
    assert read_records(path, allow_empty=True) == []
    with pytest.raises(DatasetError, match="file is empty"):
        read_records(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(RECORDS, path)
    before = path.read_bytes()
    broken = Record(id="bad", instruction="lone \ud800 surrogate", output="x")
    with pytest.raises(UnicodeEncodeError):
        write_jsonl([RECORDS[0], broken], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
