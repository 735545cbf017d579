"""Exports read back to the same records in every format, and come with a LLaMA-Factory dataset_info.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from middo.dataio import read_dataset, write_jsonl
from middo.errors import MiddoError
from middo.export import EXTENSIONS, export_command, export_round
from middo.ingest import import_dataset
from middo.records import Record

RECORDS = [
    Record(
        id="r1",
        instruction="Übersetze ins Englische:",
        input="Guten Morgen\nund gute Nacht",
        output="Good morning 🌅 and good night",
        system="Antworte knapp.",
        history=(("Hallo", "Hi!"), ("你好吗？", "很好。")),
        parent_id="s1",
        round=2,
        axis="quality",
        op="improve",
        meta={"source": "forum", "score": 0.5, "tags": ["de", {"x": None}]},
    ),
    Record(id="r2", instruction="Line one\n", input="two", output="Joined as LLaMA-Factory does.", round=2),
    Record(
        id="r3",
        instruction="Simplify: why is the sky blue?",
        output="Rayleigh scattering.",
        parent_id="s9",
        round=2,
        axis="complexity",
        op="simplify",
        meta={"teacher": "t"},
    ),
    Record(id="s4", instruction="Name a prime.", output="7", system="  "),
]
FORMATS = list(EXTENSIONS)


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data" / "round_2" / "train.jsonl"
    write_jsonl(RECORDS, path)
    return path


def _same(got: list[Record]) -> None:
    assert got == RECORDS  # ids, text, history, system, input, lineage
    assert [r.meta for r in got] == [r.meta for r in RECORDS]  # meta is not part of Record equality


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_to_the_same_records(data_file, tmp_path, fmt):
    out = export_round(data_file, tmp_path / "exports" / f"round_2.{EXTENSIONS[fmt]}", fmt)
    _same(read_dataset(out).records)  # fmt auto
    _same(read_dataset(out, fmt=fmt).records)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_imports_back_through_its_dataset_info_entry(data_file, tmp_path, fmt):
    """What ``llamafactory-cli train --dataset_dir exports --dataset NAME`` reads, middo's import reads the same."""
    out = export_command(str(data_file.parents[1]), 2, fmt, str(tmp_path / "exports" / f"r.{EXTENSIONS[fmt]}"))
    info = json.loads((out.parent / "dataset_info.json").read_text())
    name = "middo_round_2" if fmt == "alpaca" else f"middo_round_2_{fmt}"
    assert info[name]["file_name"] == out.name
    r0 = tmp_path / "round_0"
    import_dataset(out.parent, r0, tmp_path / "m.json", fmt="auto", split="train", limit=0, entry=name)
    _same(read_dataset(r0 / "train.jsonl").records)


def test_conversation_layouts(data_file, tmp_path):
    share = export_round(data_file, tmp_path / "r.sharegpt.jsonl", "sharegpt")
    first = json.loads(share.read_text(encoding="utf-8").splitlines()[0])
    assert [(m["from"], m["value"]) for m in first["conversations"]] == [
        ("human", "Hallo"),
        ("gpt", "Hi!"),
        ("human", "你好吗？"),
        ("gpt", "很好。"),
        ("human", "Übersetze ins Englische:\nGuten Morgen\nund gute Nacht"),
        ("gpt", "Good morning 🌅 and good night"),
    ]
    assert (first["id"], first["system"], first["input"], first["parent_id"]) == (
        "r1",
        "Antworte knapp.",
        RECORDS[0].input,
        "s1",
    )
    assert "🌅" in share.read_text(encoding="utf-8")  # UTF-8, not \\u escapes

    openai = export_round(data_file, tmp_path / "r.openai.jsonl", "openai")
    first = json.loads(openai.read_text(encoding="utf-8").splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "Antworte knapp."}
    assert [m["role"] for m in first["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    second = json.loads(openai.read_text(encoding="utf-8").splitlines()[1])
    assert [m["role"] for m in second["messages"]] == ["user", "assistant"]  # no empty system message


def test_parquet_has_one_row_per_record_and_history_as_a_list_column(data_file, tmp_path):
    out = export_round(data_file, tmp_path / "r.parquet", "parquet")
    frame = pl.read_parquet(out)
    assert frame.height == len(RECORDS)
    assert frame.schema["history"] == pl.List(pl.List(pl.String))
    assert frame["history"][0].to_list() == [["Hallo", "Hi!"], ["你好吗？", "很好。"]]
    assert frame["id"].to_list() == [r.id for r in RECORDS]


def test_dataset_info_beside_exports(data_file, tmp_path):
    exports = tmp_path / "exports"
    for fmt in FORMATS:
        export_round(data_file, exports / f"round_2.{EXTENSIONS[fmt]}", fmt)
    info = json.loads((exports / "dataset_info.json").read_text())
    assert list(info) == ["round_2_jsonl", "round_2_sharegpt_jsonl", "round_2_openai_jsonl", "round_2_parquet"]
    for entry in info.values():
        assert {"file_name", "formatting", "columns"} <= set(entry)
        assert (exports / entry["file_name"]).is_file()
    assert info["round_2_parquet"]["formatting"] == info["round_2_jsonl"]["formatting"] == "alpaca"
    share = info["round_2_sharegpt_jsonl"]
    assert share["formatting"] == "sharegpt" and share["columns"] == {"messages": "conversations", "system": "system"}
    assert share["tags"] == {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "system_tag": "system",
    }
    assert info["round_2_openai_jsonl"]["tags"]["role_tag"] == "role"


def test_export_command_default_paths(data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = str(data_file.parents[1])
    written = [export_command(data_dir, 2, fmt, None) for fmt in FORMATS]
    assert [str(p) for p in written] == [
        os.path.join("exports", name)
        for name in ("round_2.jsonl", "round_2.sharegpt.jsonl", "round_2.openai.jsonl", "round_2.parquet")
    ]
    info = json.loads(Path("exports/dataset_info.json").read_text())
    assert {k: v["file_name"] for k, v in info.items()} == {
        "middo_round_2": "round_2.jsonl",
        "middo_round_2_sharegpt": "round_2.sharegpt.jsonl",
        "middo_round_2_openai": "round_2.openai.jsonl",
        "middo_round_2_parquet": "round_2.parquet",
    }


def test_export_errors(data_file, tmp_path):
    with pytest.raises(MiddoError, match=r"round_7/train.jsonl: no such file; round 7 has no dataset yet"):
        export_command(str(data_file.parents[1]), 7, "alpaca", None)
    with pytest.raises(MiddoError, match=r"export: unknown format 'csv'; expected one of alpaca, sharegpt, openai"):
        export_command(str(data_file.parents[1]), 2, "csv", None)
    with pytest.raises(MiddoError, match=r"unknown format 'csv'"):
        export_round(data_file, tmp_path / "x.csv", "csv")
    assert not (tmp_path / "x.csv").exists()


def test_read_back_rules_do_not_change_other_files(tmp_path):
    """Only our exports' own markers split an input off or decode meta text; other files read as before."""
    other = tmp_path / "other.jsonl"
    turns = [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "Hi"}]
    other.write_text(json.dumps({"conversations": turns, "input": "unrelated"}) + "\n")
    [record] = read_dataset(other).records
    assert (record.instruction, record.input, record.meta) == ("Say hi", "", {"input": "unrelated"})

    table = tmp_path / "other.parquet"
    pl.DataFrame({"instruction": ["Q"], "output": ["A"], "meta": ['{"k": 1}']}).write_parquet(table)
    [record] = read_dataset(table).records
    assert record.meta == {"meta": '{"k": 1}'}  # no middo.meta marker: the text is just an unknown field


def test_cli_export_writes_the_round_in_the_asked_format(data_file, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli" / "round_2.openai.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "middo",
            "export",
            "2",
            "--format",
            "openai",
            "--data",
            str(data_file.parents[1]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "Antworte knapp."}
    _same(read_dataset(out, fmt="openai").records)
    bad = subprocess.run(
        [sys.executable, "-m", "middo", "export", "7", "--format", "openai", "--data", str(data_file.parents[1])],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "round_7" in bad.stderr
