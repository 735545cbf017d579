"""Readers: good input gives exactly the expected records; bad input is a DatasetError or a reject with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from middo.dataio import DatasetError, ReadResult, read_dataset
from middo.dataio.readers import MAX_RAW
from middo.records import Record, content_id

TESTS = Path(__file__).resolve().parents[1]
GOOD = TESTS / "assets" / "datasets"
BAD = TESTS / "data" / "bad"


def _assert_adds_up(result: ReadResult, path: Path) -> None:
    """The invariant every reader keeps: nothing is lost between the file and records + rejects (+ blank)."""
    counts = result.counts()
    assert counts["read"] + counts["rejected"] + counts["blank"] == counts["total"]
    if path.suffix == ".jsonl":
        data = path.read_bytes()
        assert counts["total"] == data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _alpaca_expected() -> list[Record]:
    third = ("Écris «bonjour» en chinois 🙂", "", "你好\n(nǐ hǎo)")
    return [
        Record(id="a-1", instruction="Add 2 and 3.", output="2 + 3 = 5.", meta={"category": "math"}),
        Record(
            id="7",
            instruction="Translate to French.",
            input="Good morning",
            output="Bonjour",
            system="You are a translator.",
            history=(("Hi", "Hello! How can I help?"),),
        ),
        Record(id=content_id(*third), instruction=third[0], output=third[2], meta={"tags": ["zh", "greeting"]}),
    ]


def _assert_same(got: list[Record], expected: list[Record]) -> None:
    assert got == expected
    assert [r.meta for r in got] == [r.meta for r in expected]  # meta is excluded from Record equality


@pytest.mark.parametrize("name", ["alpaca.json", "alpaca.jsonl"])
def test_alpaca(name):
    result = read_dataset(GOOD / name)
    _assert_same(result.records, _alpaca_expected())
    assert result.rejects == []
    assert result.fmt == "alpaca"
    assert all(r.round == 0 and r.op == "seed" and r.parent_id is None and r.axis is None for r in result.records)
    assert result.blank == (1 if name.endswith(".jsonl") else 0)
    _assert_adds_up(result, GOOD / name)


def test_sharegpt():
    result = read_dataset(GOOD / "sharegpt.json")
    assert result.fmt == "sharegpt" and result.container == "json"
    first, second = result.records
    assert first == Record(
        id="sg-1", instruction="And 3+3?", output="6.", system="Be brief.", history=(("What is 2+2?", "4."),)
    )
    assert first.meta == {"source": "forum"}
    assert second == Record(
        id=content_id("Name a prime.", "", "7 is prime."), instruction="Name a prime.", output="7 is prime."
    )
    assert first.messages()[0] == {"role": "system", "content": "Be brief."}
    _assert_adds_up(result, GOOD / "sharegpt.json")


def test_openai():
    result = read_dataset(GOOD / "openai.jsonl")
    assert result.fmt == "openai" and result.container == "jsonl"
    first, second = result.records
    assert first == Record(id="101", instruction="Capital of Japan?", output="Tokyo.")
    assert second == Record(
        id="oa-2",
        instruction="Of grass?",
        output="Green.",
        system="You answer in one word.",
        history=(("Colour of the sky?", "Blue."),),
    )
    assert second.meta == {"lang": "en"}


def _alpaca_rows() -> list[dict]:
    """The alpaca fixture as table rows; Parquet columns need one type, so ids become str."""
    rows = json.loads((GOOD / "alpaca.json").read_text(encoding="utf-8"))
    return [{**row, "id": str(row["id"])} if "id" in row else row for row in rows]


def test_parquet(tmp_path):
    import polars as pl

    path = tmp_path / "alpaca.parquet"
    pl.DataFrame(_alpaca_rows()).write_parquet(path)
    result = read_dataset(path)
    assert result.container == "parquet"
    _assert_same(result.records, _alpaca_expected())
    assert result.counts() == {"read": 3, "rejected": 0, "blank": 0, "total": 3}


def test_parquet_bad_row_is_a_reject(tmp_path):
    import polars as pl

    path = tmp_path / "rows.parquet"
    pl.DataFrame({"instruction": ["Hi", "Hello"], "output": ["Hey", None]}).write_parquet(path)
    result = read_dataset(path)
    assert [r.instruction for r in result.records] == ["Hi"]
    (reject,) = result.rejects
    assert (reject.line, reject.reason) == (2, "row 2: missing required field 'output'")


def test_hf_disk(tmp_path):
    import datasets
    import polars as pl

    frame = pl.DataFrame(_alpaca_rows())
    datasets.Dataset.from_polars(frame).save_to_disk(tmp_path / "one")
    _assert_same(read_dataset(tmp_path / "one").records, _alpaca_expected())

    both = datasets.DatasetDict(
        {"train": datasets.Dataset.from_polars(frame), "test": datasets.Dataset.from_polars(frame.head(1))}
    )
    both.save_to_disk(tmp_path / "dict")
    assert len(read_dataset(tmp_path / "dict").records) == 3
    assert [r.id for r in read_dataset(tmp_path / "dict", split="test").records] == ["a-1"]
    with pytest.raises(DatasetError, match=r"dict: split 'valid' not found; expected one of test, train"):
        read_dataset(tmp_path / "dict", split="valid")


def test_fmt_overrides_detection(tmp_path):
    odd = tmp_path / "data.txt"
    shutil.copy(GOOD / "alpaca.jsonl", odd)
    assert len(read_dataset(odd).records) == 3  # sniffed as JSON Lines
    forced = read_dataset(odd, fmt="sharegpt")  # forcing the wrong schema rejects every record, with the reason
    assert forced.records == []
    assert forced.rejects[0].reason == "line 1: missing required field 'conversations'"
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_dataset(odd, fmt="parquet")
    with pytest.raises(DatasetError, match="unknown fmt 'csv'"):
        read_dataset(odd, fmt="csv")


def test_lineage_is_kept_and_validated(tmp_path):
    path = tmp_path / "lineage.jsonl"
    rows = [
        {
            "id": "c1",
            "instruction": "Q",
            "output": "A",
            "parent_id": "p1",
            "round": 2,
            "axis": "quality",
            "op": "improve",
        },
        {"id": "c2", "instruction": "Q2", "output": "A2", "round": -1},
        {"id": "c3", "instruction": "Q3", "output": "A3", "axis": "speed"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = read_dataset(path)
    (record,) = result.records
    assert (record.parent_id, record.round, record.axis, record.op) == ("p1", 2, "quality", "improve")
    assert [r.reason for r in result.rejects] == [
        "line 2: field 'round': expected an int >= 0, got -1",
        "line 3: field 'axis': expected one of complexity, diversity, quality or null, got 'speed'",
    ]


def test_rejects_file_is_written_even_when_empty(tmp_path):
    out = tmp_path / "out" / "rejects.jsonl"
    read_dataset(GOOD / "alpaca.json", rejects_path=out)
    assert out.read_text() == ""
    read_dataset(BAD / "wrong_type.jsonl", rejects_path=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["kind"]) for r in rows] == [(3, "wrong_type"), (7, "wrong_type")]
    assert rows[1]["source"].endswith("wrong_type.jsonl") and '"output": 42' in rows[1]["raw"]


# --- malformed input -----------------------------------------------------------------------------------------------

REJECT_CASES = {
    # file: [(line, kind, reason)] for each reject, in order
    "bad_json_line.jsonl": [
        (2, "bad_json", "line 2: invalid JSON: Expecting value at column 49; expected one JSON object per line")
    ],
    "missing_field.jsonl": [(2, "missing_field", "line 2: missing required field 'output'")],
    "wrong_type.jsonl": [
        (3, "wrong_type", "line 3: field 'instruction': expected str, got list"),
        (7, "wrong_type", "line 7: field 'output': expected str, got int"),
    ],
    "empty_strings.jsonl": [
        (1, "empty_text", "line 1: field 'instruction': empty after stripping whitespace; expected non-empty text"),
        (2, "empty_text", "line 2: field 'output': empty after stripping whitespace; expected non-empty text"),
    ],
    "bad_utf8.jsonl": [(2, "bad_utf8", "line 2: invalid UTF-8 byte 0xe9 at byte 33 of the line; expected UTF-8 text")],
    "mixed_encodings.jsonl": [
        (2, "bad_utf8", "line 2: invalid UTF-8 byte 0xe8 at byte 32 of the line; expected UTF-8 text")
    ],
    "control_chars.jsonl": [
        (
            2,
            "control_char",
            "line 2: field 'instruction': control character U+0007 at offset 14; expected text "
            "without control characters other than \\n, \\t, \\r",
        ),
        (
            3,
            "control_char",
            "line 3: field 'output': control character U+001B at offset 7; expected text "
            "without control characters other than \\n, \\t, \\r",
        ),
    ],
    "duplicate_ids.jsonl": [
        (3, "duplicate_id", "line 3: duplicate id 'g1' (first seen at line 1); expected unique ids"),
        (5, "duplicate", "line 5: exact duplicate of line 4"),  # no ids in the file: say what it is
    ],
    "wrong_role_order.json": [
        (
            2,
            "role_order",
            "line 2 (item 1): field 'conversations[0].from': expected role 'human', got 'gpt'; "
            "expected an optional system message, then alternating human/gpt turns ending with gpt",
        ),
        (
            15,
            "role_order",
            "line 15 (item 2): field 'conversations': ends with a human message; expected an "
            "optional system message, then alternating human/gpt turns ending with gpt",
        ),
        (
            32,
            "role_order",
            "line 32 (item 3): field 'conversations[1].from': system message not first; expected "
            "an optional system message, then alternating human/gpt turns ending with gpt",
        ),
        (
            49,
            "role_order",
            "line 49 (item 4): field 'conversations[1].from': expected role 'gpt', got 'human'; "
            "expected an optional system message, then alternating human/gpt turns ending with gpt",
        ),
    ],
}


@pytest.mark.parametrize("name", sorted(REJECT_CASES))
def test_bad_records_are_rejected_with_reasons(name):
    path = BAD / name
    result = read_dataset(path)
    assert [(r.line, r.kind, r.reason) for r in result.rejects] == REJECT_CASES[name]
    assert all(r.source == str(path) and r.raw for r in result.rejects)
    assert len(result.records) == result.total - len(REJECT_CASES[name]) - result.blank > 0
    _assert_adds_up(result, path)


# Files in tests/data/bad that must raise, with a fragment that shows the line and what was expected.
RAISE_CASES = {
    "empty.jsonl": "file is empty; expected at least one JSON record",
    "truncated.json": "line 3, column 31: invalid JSON in item 2",
}


def _bad_files() -> list[str]:
    return sorted(p.name for p in BAD.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")


@pytest.mark.parametrize("name", _bad_files())
def test_every_bad_file_is_accounted_for(name):
    """Whatever is dropped in tests/data/bad either raises naming the file or loads with rejects that add up."""
    path = BAD / name
    assert name in REJECT_CASES or name in RAISE_CASES, f"add {name} to REJECT_CASES or RAISE_CASES"
    try:
        result = read_dataset(path)
    except DatasetError as e:
        assert name in RAISE_CASES, f"{name} raised unexpectedly: {e}"
        assert str(e).startswith(f"{path}: ") and RAISE_CASES[name] in str(e)
        return
    assert name not in RAISE_CASES, f"{name} should raise DatasetError"
    assert result.rejects, "a file in tests/data/bad must reject something"
    for reject in result.rejects:
        assert reject.reason.startswith((f"line {reject.line}:", f"line {reject.line} (", f"row {reject.line}:"))
        assert reject.source == str(path) and 0 < len(reject.raw) <= MAX_RAW
    _assert_adds_up(result, path)


def test_bad_readme_lists_every_file():
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    assert [name for name in _bad_files() if f"| `{name}` |" not in readme] == []


def test_mixed_encodings_keep_good_accents():
    result = read_dataset(BAD / "mixed_encodings.jsonl")
    assert [(r.id, r.instruction) for r in result.records] == [
        ("m1", "Traduis « café crème »."),
        ("m3", "Größe auf Englisch?"),
    ]
    assert "Cr\\xe8me br\\xfbl\\xe9e?" in result.rejects[0].raw


def test_bad_utf8_raw_shows_the_byte():
    (reject,) = read_dataset(BAD / "bad_utf8.jsonl").rejects
    assert "caf\\xe9 au lait" in reject.raw


def test_lone_surrogate_is_rejected(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"instruction": "bad \\ud800 half", "output": "x"}\n{"instruction": "ok", "output": "y"}\n')
    result = read_dataset(path)
    assert [r.kind for r in result.rejects] == ["bad_unicode"]
    assert "U+D800" in result.rejects[0].reason


def test_bad_bytes_in_json_array_reject_one_item(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'[\n{"instruction": "caf\xe9", "output": "x"},\n{"instruction": "ok", "output": "y"}\n]\n')
    result = read_dataset(path)
    assert [r.instruction for r in result.records] == ["ok"]
    assert result.rejects[0].reason == "line 2 (item 1): invalid UTF-8 byte 0xe9 on line 2; expected UTF-8 text"
    assert result.rejects[0].raw == '{"instruction": "caf\\xe9", "output": "x"}'


def test_one_megabyte_prompt(tmp_path):
    big = "word " * 200_000 + "end"
    path = tmp_path / "big.jsonl"
    lines = [{"id": "big", "instruction": big, "output": "ok"}, {"id": "bad", "instruction": big, "output": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    result = read_dataset(path)
    assert result.records[0].instruction == big  # no length cap here: filtering by length is a later decision
    (reject,) = result.rejects
    assert reject.reason == "line 2: field 'output': expected str, got int"
    assert len(reject.raw) == MAX_RAW and reject.raw.startswith('{"id": "bad"')


# --- whole-file failures -------------------------------------------------------------------------------------------


def test_truncated_json_array():
    with pytest.raises(DatasetError) as info:
        read_dataset(BAD / "truncated.json")
    message = str(info.value)
    assert message.startswith(f"{BAD / 'truncated.json'}: line 3, column 31: invalid JSON in item 2 (Unterminated ")
    assert "expected a JSON array of records" in message


def test_empty_file():
    with pytest.raises(DatasetError) as info:
        read_dataset(BAD / "empty.jsonl")
    assert str(info.value) == f"{BAD / 'empty.jsonl'}: file is empty; expected at least one JSON record"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("blank.jsonl", b"\n  \n", "blank.jsonl: file has only blank lines; expected at least one JSON record"),
        ("none.json", b"[]", "none.json: JSON array is empty; expected at least one record"),
        ("obj.json", b'{"data": [1]}', "obj.json: top-level JSON is a single object (keys: data); expected an array"),
        ("num.json", b"42", "num.json: top-level JSON starts with '4'; expected a JSON array"),
        ("open.json", b'[{"instruction": "a", "output": "b"}', "open.json: line 1: JSON array ends after item 1"),
        ("extra.json", b'[{"instruction": "a", "output": "b"}] x', "extra.json: line 1: extra data after the "),
        ("latin1.json", b'[{"instruction": "caf\xe9", "output": "b"}]', "latin1.json: not UTF-8 text"),
        ("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "b"}\n', "latin1.jsonl: not UTF-8 text"),
        ("utf16.jsonl", '{"a": 1}\n'.encode("utf-16"), "utf16.jsonl: looks like UTF-16"),
        ("data.bin", b"\x89PNG", "data.bin: cannot tell the format"),
    ],
)
def test_unusable_files_raise(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert str(info.value).startswith(str(tmp_path / message.split(":")[0]))
    assert message in str(info.value)


def test_missing_paths_and_plain_directories(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such file or directory; expected a \.json"):
        read_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match=r"plain: is a directory but not a dataset saved with save_to_disk"):
        read_dataset(tmp_path / "plain")
    with pytest.raises(DatasetError, match=r"alpaca\.json: is a file; fmt='hf_disk' expects a folder"):
        read_dataset(GOOD / "alpaca.json", fmt="hf_disk")
