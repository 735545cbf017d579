"""The refine engine end to end with a real local teacher (the default model, in-process, greedy)."""

import pytest

from middo.records import Record
from middo.refine.engine import assign_axes, refine_records
from middo.teachers.base import Sampling

RECORDS = [
    Record(
        id="hard",
        instruction="Derive the Euler-Lagrange equations from the principle of stationary action.",
        output="Let S = ∫L(q, q̇, t) dt. Varying q → q + εη with η(t1)=η(t2)=0 ...",
    ),
    Record(id="poor", instruction="capitl of france??", output="berlin i think"),
    Record(
        id="rare",
        instruction="Explain the fornyrðislag meter of Old Norse poetry.",
        output="Fornyrðislag has stanzas of eight short lines with two lifts each, linked by alliteration.",
    ),
    Record(id="ok1", instruction="Give a synonym for big.", output="Large."),
    Record(id="ok2", instruction="What is 2 + 2?", output="4."),
]


def test_precedence_and_overlaps():
    flags = {"complexity": {"a", "b"}, "quality": {"b", "c"}, "diversity": {"c", "d"}}
    assigned, overlaps = assign_axes(flags, ["quality", "complexity", "diversity"])
    assert assigned == {"b": "quality", "c": "quality", "a": "complexity", "d": "diversity"}
    assert overlaps == {"quality+complexity": 1, "quality+diversity": 1}
    assigned, _ = assign_axes(flags, ["diversity", "complexity", "quality"])
    assert assigned["c"] == "diversity" and assigned["b"] == "complexity"


@pytest.fixture(scope="module")
def teacher(base_model_dir):
    from middo.teachers.transformers_backend import TransformersTeacher

    return TransformersTeacher(base_model_dir, device="cpu", dtype="float32")


@pytest.mark.slow
def test_each_operation_with_lineage_and_counts(teacher):
    flags = {"complexity": {"hard"}, "quality": {"poor"}, "diversity": {"rare"}}
    res = refine_records(RECORDS, flags, teacher, Sampling(max_new_tokens=48), round_=1, max_added_fraction=0.2)
    rep = res.report
    assert rep["size_before"] == 5
    assert rep["kept"] + rep["replaced"] + rep["added"] - rep["dropped_duplicates"] == rep["size_after"]
    assert rep["size_after"] == len(res.records)
    handled = {c["parent_id"]: c for c in res.changes}
    assert set(handled) == {"hard", "poor", "rare"}
    for parent, op in (("hard", "simplify"), ("poor", "improve"), ("rare", "diversify")):
        c = handled[parent]
        assert c["op"] == op
        if c["result"] == "kept_original":
            assert c["status"].startswith("unparseable")
            assert parent in [r.id for r in res.records]
        else:
            new = next(r for r in res.records if r.id == c["id"])
            assert (new.parent_id, new.round, new.op) == (parent, 1, op)
            assert new.instruction and new.output
    by_id = {r.id: r for r in res.records}
    assert by_id["ok1"] == RECORDS[3] and by_id["ok2"] == RECORDS[4]  # untouched samples pass through unchanged
    if handled["rare"]["result"] == "added":
        assert "rare" in by_id  # diversify adds beside the original
    assert sum(rep["reply_status"].values()) == 3


@pytest.mark.slow
def test_diversity_cap_keeps_scale(teacher):
    flags = {"diversity": {"rare", "ok1", "ok2"}}
    knn = {"rare": 0.1, "ok1": 0.5, "ok2": 0.3}
    res = refine_records(
        RECORDS, flags, teacher, Sampling(max_new_tokens=24), round_=1, max_added_fraction=0.2, knn_sim=knn
    )
    assert res.report["diversity_cap"] == 1
    assert res.report["diversity_over_cap"] == 2
    handled = [c for c in res.changes if c["status"] != "skipped"]
    assert [c["parent_id"] for c in handled] == ["rare"]  # the sparsest one
    assert res.report["size_after"] <= len(RECORDS) + 1


@pytest.mark.slow
def test_a_sample_inspires_only_once_across_rounds(teacher):
    """Round 2 must not re-ask the teacher about round 1's parent (it would return the same child again)."""
    flags = {"diversity": {"rare", "ok2"}}
    knn = {"rare": 0.1, "ok2": 0.3}
    first = refine_records(
        RECORDS, flags, teacher, Sampling(max_new_tokens=24), round_=1, max_added_fraction=0.2, knn_sim=knn
    )
    child = next(r for r in first.records if r.parent_id == "rare")  # the sparsest one got the one slot
    second = refine_records(
        first.records, flags, teacher, Sampling(max_new_tokens=24), round_=2, max_added_fraction=0.2, knn_sim=knn
    )
    rep = second.report
    assert rep["diversity_already_inspired"] == 1
    skipped = next(c for c in second.changes if c["parent_id"] == "rare")
    assert skipped["status"] == "skipped" and child.id in skipped["reason"]
    asked = [c["parent_id"] for c in second.changes if c["status"] != "skipped"]
    assert asked == ["ok2"]  # the slot went to the next sparsest sample
    assert rep["dropped_duplicates"] == 0


class CopyingTeacher:
    """A teacher that answers every rewrite request with the instruction it was shown (as small models do)."""

    def complete(self, prompts, sampling):
        out = []
        for p in prompts:
            if "Instruction:\n" in p:
                shown = p.split("Instruction:\n", 1)[1].split("\n\n", 1)[0]
                out.append(f"<instruction>{shown}</instruction>")
            else:
                out.append("An answer.")
        return out


def test_a_rewrite_that_copies_the_original_keeps_the_original():
    flags = {"complexity": {"hard"}, "diversity": {"rare"}}
    res = refine_records(RECORDS, flags, CopyingTeacher(), Sampling(), round_=1, max_added_fraction=0.2)
    assert [r.id for r in res.records] == [r.id for r in RECORDS]  # nothing replaced, nothing added
    statuses = {c["parent_id"]: c["status"] for c in res.changes}
    assert statuses == {
        "hard": "unparseable: the reply repeats the original",
        "rare": "unparseable: the reply repeats the original",
    }
    assert res.report["dropped_duplicates"] == 0 and res.report["teacher_calls"] == 2  # no answer was asked for
