from middo.dataio import write_jsonl
from middo.diff import diff_records, load_version, render
from middo.records import Record

A = [
    Record(id="a", instruction="Explain quantum chromodynamics with full derivations.", output="..."),
    Record(id="b", instruction="wat is capitl of france", output="Berlin"),
    Record(id="c", instruction="Old Norse meter?", output="Fornyrðislag has four lifts per long line."),
    Record(id="d", instruction="Say hi.", output="Hi!"),
]
B = [
    Record(
        id="a2",
        instruction="Explain what quarks are.",
        output="Quarks are...",
        parent_id="a",
        round=1,
        axis="complexity",
        op="simplify",
    ),
    Record(
        id="b2",
        instruction="What is the capital of France?",
        output="Paris.",
        parent_id="b",
        round=1,
        axis="quality",
        op="improve",
    ),
    A[2],
    Record(
        id="c2",
        instruction="Describe the skaldic dróttkvætt meter.",
        output="Six syllables...",
        parent_id="c",
        round=1,
        axis="diversity",
        op="diversify",
    ),
]


def test_diff_classifies_by_lineage():
    d = diff_records(A, B)
    assert d["kept"] == 1
    assert [r.id for r in d["replaced"]] == ["a2", "b2"]
    assert [r.id for r in d["added"]] == ["c2"]
    assert [r.id for r in d["removed"]] == ["d"]
    assert d["by_axis"] == {
        "-/-/removed": 1,
        "complexity/simplify/replaced": 1,
        "diversity/diversify/added": 1,
        "quality/improve/replaced": 1,
    }
    text = render(d, "round_0", "round_1")
    assert "~ b -> b2  [quality/improve, round 1]" in text
    assert "+ c2  [diversity/diversify, round 1, parent c]" in text


def test_load_version_by_round_number(tmp_path):
    write_jsonl(B, tmp_path / "data/round_1/train.jsonl")
    assert [r.id for r in load_version("1", tmp_path)] == [r.id for r in B]
    assert [r.id for r in load_version("round_1", tmp_path)] == [r.id for r in B]
