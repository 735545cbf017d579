"""LLaMA-Factory interop: the dataset_info.json beside each round's data, and import through a user's entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from middo.dataio import DatasetError, read_dataset, write_jsonl
from middo.dataio.llamafactory import (
    ALPACA_COLUMNS,
    Columns,
    dataset_info_entry,
    find_dataset_info,
    open_entry,
    write_dataset_info,
)
from middo.errors import MiddoError
from middo.ingest import import_dataset
from middo.records import Record

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [
    Record(
        id="r1",
        instruction="Übersetze ins Englische:",
        input="Guten Morgen",
        output="Good morning",
        system="Antworte knapp.",
        history=(("Hallo", "Hi!"), ("Wie geht's?", "Gut.")),
        parent_id="s1",
        round=1,
        axis="quality",
        op="improve",
        meta={"source": "forum", "tags": ["de", "en"]},
    ),
    Record(id="r2", instruction="2 + 2 = ?", output="4", round=1),
]


def _import(source, tmp_path, entry="", fmt="auto"):
    out = tmp_path / "round_0"
    counts = import_dataset(source, out, tmp_path / "import.json", fmt=fmt, split="train", limit=0, entry=entry)
    return counts, read_dataset(out / "train.jsonl").records, out


def _info(folder: Path, entries: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rejects(out: Path) -> list[str]:
    return [json.loads(line)["reason"] for line in (out / "rejects.jsonl").read_text().splitlines()]


# ---- the dataset_info.json that travels with each round ----


def test_round_folder_dataset_info_follows_llamafactory_schema(tmp_path):
    write_jsonl(RECORDS, tmp_path / "round_1" / "train.jsonl")
    path = write_dataset_info(tmp_path / "round_1", "middo_round_1")
    info = json.loads(path.read_text())
    assert info == dataset_info_entry("middo_round_1", "train.jsonl")
    entry = info["middo_round_1"]
    assert set(entry) == {"file_name", "formatting", "columns"}
    assert entry["formatting"] == "alpaca"
    assert entry["columns"] == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    }
    assert (path.parent / entry["file_name"]).is_file()  # dataset_dir + file_name, as LLaMA-Factory joins them


def test_record_json_has_the_types_llamafactory_alpaca_converter_reads(tmp_path):
    """history: [user, assistant] pairs; system: a string; every column the entry names is present."""
    obj = json.loads(RECORDS[0].to_json())
    assert obj["history"] == [["Hallo", "Hi!"], ["Wie geht's?", "Gut."]]
    assert isinstance(obj["system"], str) and isinstance(obj["input"], str)
    assert set(ALPACA_COLUMNS.values()) <= set(obj)
    assert json.loads(RECORDS[1].to_json())["history"] == []  # a list, never null


def test_import_writes_round_0_dataset_info(tmp_path):
    _, records, out = _import(ROOT / "data/seed/seed.jsonl", tmp_path)
    info = json.loads((out / "dataset_info.json").read_text())
    assert list(info) == ["middo_round_0"] and info["middo_round_0"]["file_name"] == "train.jsonl"
    assert records


def test_a_round_folder_imports_back_through_its_own_entry(tmp_path):
    folder = tmp_path / "data" / "round_1"
    write_jsonl(RECORDS, folder / "train.jsonl")
    write_dataset_info(folder, "middo_round_1")
    for source, entry in ((folder / "dataset_info.json", "middo_round_1"), (folder, "")):  # the file, or its folder
        _, records, _ = _import(source, tmp_path / source.name, entry)
        assert records == RECORDS
        assert [r.meta for r in records] == [r.meta for r in RECORDS]


def test_write_dataset_info_merge_keeps_other_entries(tmp_path):
    write_dataset_info(tmp_path, "a", "a.jsonl")
    write_dataset_info(tmp_path, "b", "b.jsonl", fmt="sharegpt", merge=True)
    assert list(json.loads((tmp_path / "dataset_info.json").read_text())) == ["a", "b"]
    write_dataset_info(tmp_path, "c", "c.jsonl")  # a round's folder names its own dataset only
    assert list(json.loads((tmp_path / "dataset_info.json").read_text())) == ["c"]
    (tmp_path / "dataset_info.json").write_text("[1, 2]")
    with pytest.raises(MiddoError, match=r"dataset_info.json: top-level JSON is a list; expected an object"):
        write_dataset_info(tmp_path, "d", "d.jsonl", merge=True)
    assert (tmp_path / "dataset_info.json").read_text() == "[1, 2]"


# ---- import through a user's entry ----


def test_alpaca_entry_with_renamed_columns(tmp_path):
    rows = [
        {"question": "Capital of France?", "context": "Europe", "answer": "Paris", "sys": "Be brief.",
         "turns": [["Hi", "Hello"]], "id": "q1", "lang": "en"},
        {"question": "Largest planet?", "answer": "Jupiter"},
        {"question": "No answer here"},
        {"question": "Bad history", "answer": "x", "turns": "not a list"},
    ]  # fmt: skip
    _jsonl(tmp_path / "lf" / "files" / "qa.jsonl", rows)
    columns = {"prompt": "question", "query": "context", "response": "answer", "system": "sys", "history": "turns"}
    info = _info(
        tmp_path / "lf", {"other": {"file_name": "x.json"}, "qa": {"file_name": "files/qa.jsonl", "columns": columns}}
    )
    counts, records, out = _import(info, tmp_path, entry="qa")
    assert (counts["kept"], counts["rejected"], counts["total"]) == (2, 2, 4)
    first = records[0]
    assert (first.id, first.instruction, first.input, first.output) == ("q1", "Capital of France?", "Europe", "Paris")
    assert (first.system, first.history, first.meta) == ("Be brief.", (("Hi", "Hello"),), {"lang": "en"})
    assert records[1].instruction == "Largest planet?" and records[1].output == "Jupiter"
    assert _rejects(out) == [  # line numbers kept; fields named as the file names them
        "line 3: missing required field 'answer'",
        "line 4: field 'turns': expected a list of [user, assistant] pairs, got str",
    ]


def test_columns_llamafactory_does_not_read_go_to_meta(tmp_path):
    """Without "columns" LLaMA-Factory reads instruction/input/output only: no system, no history."""
    row = {"instruction": "Q", "output": "A", "system": "S", "history": [["u", "a"]]}
    _jsonl(tmp_path / "lf" / "d.jsonl", [row])
    _, [record], _ = _import(_info(tmp_path / "lf", {"d": {"file_name": "d.jsonl"}}), tmp_path)
    assert (record.system, record.history) == ("", ())
    assert record.meta == {"system": "S", "history": [["u", "a"]]}  # not trained on, not lost


def test_sharegpt_entry_with_custom_tags(tmp_path):
    def msg(role, text):
        return {"speaker": role, "text": text}

    rows = [
        {"dialog": [msg("sys", "Be kind."), msg("q", "Hi"), msg("a", "Hello"), msg("q", "2+2?"), msg("a", "4")]},
        {"dialog": [msg("q", "Name a colour."), msg("a", "Blue.")], "prompt_sys": "Short answers.", "id": "c2"},
        {"dialog": [msg("q", "Hi"), msg("observation", "tool output")]},
        {"dialog": [msg("q", "Hi"), {"speaker": "a"}]},
        {"dialog": [msg("q", "Hi"), msg("q", "Again")]},
    ]
    _jsonl(tmp_path / "lf" / "chat.json", rows)
    entry = {
        "file_name": "chat.json",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "system": "prompt_sys"},
        "tags": {
            "role_tag": "speaker",
            "content_tag": "text",
            "user_tag": "q",
            "assistant_tag": "a",
            "system_tag": "sys",
        },
    }
    counts, records, out = _import(_info(tmp_path / "lf", {"chat": entry}), tmp_path, entry="chat")
    assert (counts["kept"], counts["rejected"]) == (2, 3)
    one, two = records
    assert (one.system, one.history, one.instruction, one.output) == ("Be kind.", (("Hi", "Hello"),), "2+2?", "4")
    assert (two.id, two.system, two.instruction, two.output) == ("c2", "Short answers.", "Name a colour.", "Blue.")
    assert _rejects(out) == [
        'line 3: field \'dialog[1].speaker\': unknown role "observation"; expected one of "q", "a", "sys"',
        "line 4: field 'dialog[1]': missing 'text'",
        "line 5: field 'dialog[1].speaker': expected role 'gpt', got 'human'; expected an optional system message, "
        "then alternating human/gpt turns ending with gpt",
    ]


def test_a_leading_system_message_wins_over_the_system_column(tmp_path):
    """As in LLaMA-Factory; the column is kept in meta instead of rejecting the record for having both."""
    row = {"conversations": [{"from": "system", "value": "A"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "R"}], "system": "B"}  # fmt: skip
    _jsonl(tmp_path / "lf" / "c.jsonl", [row])
    entry = {
        "file_name": "c.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
    }
    _, [record], _ = _import(_info(tmp_path / "lf", {"c": entry}), tmp_path)
    assert (record.system, record.meta) == ("A", {"system": "B"})


def test_entry_from_a_params_file_through_the_stage(tmp_path):
    """data.entry reaches the import: the stage script (in a subprocess) with a params file naming the entry."""
    _jsonl(tmp_path / "lf" / "a.jsonl", [{"q": "Q", "r": "R"}])
    columns = {"prompt": "q", "response": "r"}
    info = _info(tmp_path / "lf", {"a": {"file_name": "a.jsonl", "columns": columns}, "b": {"file_name": "b.jsonl"}})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(seed_path=str(info), entry="a", format="auto", limit=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "round_0"
    script = ROOT / "stages" / "import_seed.py"
    args = [f"--out={out}", f"--metrics={tmp_path / 'm.json'}", f"--params={tmp_path / 'params.yaml'}"]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    [record] = read_dataset(out / "train.jsonl").records
    assert (record.instruction, record.output) == ("Q", "R")


def test_find_dataset_info_tells_llamafactory_from_save_to_disk_folders(tmp_path):
    lf = _info(tmp_path / "lf", {"a": {"file_name": "a.jsonl"}})
    assert find_dataset_info(lf) == lf and find_dataset_info(lf.parent) == lf
    hf = _info(tmp_path / "hf", {"description": ""})
    (hf.parent / "state.json").write_text("{}")
    assert find_dataset_info(hf.parent) is None
    assert find_dataset_info(tmp_path / "lf" / "a.jsonl") is None


def test_reject_reasons_rename_only_quoted_field_names():
    columns = Columns("sharegpt", {"conversations": "chat", "system": "sys"}, {"role_tag": "r", "content_tag": "c"})
    assert columns.explain("field 'conversations[2].value[0].text': expected str") == (
        "field 'chat[2].c[0].text': expected str"
    )
    assert columns.explain("field 'conversations[0]': missing 'from'") == "field 'chat[0]': missing 'r'"
    assert columns.explain("field 'id': expected str or int, got list") == "field 'id': expected str or int, got list"


# ---- errors name the file, the entry and what was expected ----


@pytest.mark.parametrize(
    ("entries", "name", "message"),
    [
        ({"a": {"file_name": "a.jsonl"}, "b": {"file_name": "b.jsonl"}}, "c", r"no entry 'c'; it has: a, b$"),
        ({"a": {"file_name": "a.jsonl"}, "b": {"file_name": "b.jsonl"}}, "", r"holds 2 entries \(a, b\); name one"),
        ({}, "", r"has no dataset entries"),
        (
            {"hub": {"hf_hub_url": "org/data"}},
            "hub",
            r"entry 'hub': loads from hf_hub_url='org/data', which needs the internet .*give the entry a local "
            r"file_name$",
        ),
        ({"ms": {"ms_hub_url": "org/data"}}, "ms", r"loads from ms_hub_url='org/data', which needs the internet"),
        ({"s": {"script_url": "loader"}}, "s", r"loads from script_url='loader'"),
        ({"k": {"file_name": "a.jsonl", "formatting": "kto"}}, "k", r"formatting 'kto' is not supported; expected"),
        ({"p": {"file_name": "a.jsonl", "ranking": True}}, "p", r"is a preference dataset \(ranking: true\)"),
        ({"m": {"file_name": "a.jsonl", "columns": {"prompt": "q", "response": "r", "images": "im"}}}, "m",
         r"uses column\(s\) images \(multimodal\); middo imports text-only supervised data"),
        ({"n": {"file_name": "a.jsonl", "columns": {"prompt": "q"}}}, "n", r"columns name no response column"),
        ({"t": {"file_name": "a.jsonl", "formatting": "sharegpt", "tags": {"role_tag": "role"}}}, "t",
         r"tags lack content_tag, user_tag, assistant_tag"),
        ({"f": {"file_name": "missing.jsonl"}}, "f", r"entry 'f': file_name 'missing.jsonl': .*: no such file"),
        ({"d": {"file_name": "sub"}}, "d", r"entry 'd': file_name 'sub' is a folder"),
    ],
)  # fmt: skip
def test_entry_errors(tmp_path, entries, name, message):
    (tmp_path / "lf" / "sub").mkdir(parents=True)
    _jsonl(tmp_path / "lf" / "a.jsonl", [{"instruction": "Q", "output": "A"}])
    info = _info(tmp_path / "lf", entries)
    with pytest.raises(DatasetError, match=message) as err:
        _import(info, tmp_path, entry=name)
    assert str(err.value).startswith(str(info))
    assert not (tmp_path / "round_0" / "train.jsonl").exists()


def test_broken_dataset_info_files(tmp_path):
    bad = tmp_path / "bad" / "dataset_info.json"
    bad.parent.mkdir()
    bad.write_text('{"a": {"file_name": "a.jsonl",}}')
    with pytest.raises(DatasetError, match=r"dataset_info.json: line 1, column 31: invalid JSON"):
        open_entry(bad, "a")
    bad.write_text('["a"]')
    with pytest.raises(DatasetError, match=r"top-level JSON is a list; expected an object of dataset entries"):
        open_entry(bad, "a")
    with pytest.raises(DatasetError, match=r"nowhere/dataset_info.json: no such file"):
        open_entry(tmp_path / "nowhere" / "dataset_info.json", "a")


def test_entry_without_dataset_info_and_format_mismatch(tmp_path):
    data = _jsonl(tmp_path / "lf" / "a.jsonl", [{"instruction": "Q", "output": "A"}])
    with pytest.raises(MiddoError, match=r"a.jsonl: entry 'a' given, but this is not a LLaMA-Factory dataset_info"):
        _import(data, tmp_path, entry="a")
    info = _info(tmp_path / "lf", {"a": {"file_name": "a.jsonl"}})
    with pytest.raises(MiddoError, match=r"entry 'a' has formatting 'alpaca' but the format given is 'sharegpt'"):
        _import(info, tmp_path, entry="a", fmt="sharegpt")
