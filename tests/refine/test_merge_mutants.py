"""Rules of ``refine/merge.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded.

Pure functions on hand-made records: no teacher, so every field of a job and of a change-log entry is checked.
"""

from middo.records import Record, content_id
from middo.refine.merge import OPS, Job, Outcome, assemble, change, overlaps, precedence_jobs, report

DATA = [Record(id=i, instruction=f"prompt {i}", output=f"answer {i}") for i in ("a", "b", "c", "d")]


def test_precedence_jobs_give_neighbour_hints_to_diversify_only():
    """Hints: the neighbours in the data, most similar first, never the sample itself or a stale id."""
    flags = {"diversity": {"a"}, "complexity": {"b"}}
    neighbors = {"a": ["b", "gone", "a", "c"], "b": ["a", "c"]}
    jobs, left_out, numbers = precedence_jobs(DATA, flags, neighbors, ["complexity", "diversity"], 1.0, {"a": 0.1})
    assert jobs == [Job("a", "diversity", ("b", "c")), Job("b", "complexity", ())]
    assert left_out == [] and numbers == {"diversity_cap": 4, "diversity_over_cap": 0, "diversity_already_inspired": 0}


def test_a_sample_without_a_knn_value_counts_as_the_sparsest():
    flags = {"diversity": {"a", "b", "c"}}
    jobs, _, _ = precedence_jobs(DATA, flags, {}, ["diversity"], 0.25, {"a": 0.2, "c": 0.1})  # b has no value
    assert [j.rid for j in jobs] == ["b"]


def test_only_a_diversify_child_makes_its_parent_already_inspired():
    """A simplified or improved child does not stop its parent from inspiring a new sample."""
    child = Record(
        id="a2", instruction="simpler", output="x", parent_id="a", round=1, axis="complexity", op="simplify"
    )
    jobs, left_out, _ = precedence_jobs([*DATA, child], {"diversity": {"a"}}, {}, ["diversity"], 1.0, {})
    assert [j.rid for j in jobs] == ["a"] and left_out == []


def test_every_diversity_candidate_left_out_is_logged_with_its_reason():
    inspired = Record(id="c2", instruction="new", output="y", parent_id="c", round=1, axis="diversity", op="diversify")
    data = [*DATA, inspired]
    knn = {"a": 0.1, "b": 0.2, "c": 0.05}
    jobs, left_out, numbers = precedence_jobs(data, {"diversity": {"a", "b", "c"}}, {}, ["diversity"], 0.2, knn)
    assert [j.rid for j in jobs] == ["a"]  # cap int(0.2 * 5) = 1: the sparsest not yet inspired
    common = {"axis": "diversity", "op": "diversify", "status": "skipped", "result": "kept_original"}
    assert left_out == [
        {**common, "parent_id": "b", "reason": "over the cap of 1 new samples this round"},
        {**common, "parent_id": "c", "reason": "already inspired c2 (round 1)"},
    ]
    assert numbers == {"diversity_cap": 1, "diversity_over_cap": 1, "diversity_already_inspired": 1}


def _new(parent: str, text: str, axis: str, history=()) -> Record:
    """A new sample as the engine makes it: its id is its content id."""
    cid = content_id(text, "", f"answer to {text}", "", history)
    return Record(id=cid, instruction=text, output=f"answer to {text}", history=history, parent_id=parent, round=1,
                  axis=axis, op=OPS[axis])  # fmt: skip


def test_assemble_refuses_content_already_in_the_data_under_another_id():
    """The data's own ids are not content ids (imported samples keep theirs): a new sample is a duplicate when its
    content matches, and the log names the record that holds it."""
    cid = content_id("prompt b", "", "answer b")  # b's content, as a rewrite of a
    copy = Record(
        id=cid, instruction="prompt b", output="answer b", parent_id="a", round=1, axis="quality", op="improve"
    )
    same_id = Record(id="c", instruction="other", output="x", parent_id="b", round=1, axis="diversity", op="diversify")
    outcomes = [Outcome(Job("a", "quality"), "ok", new=copy), Outcome(Job("b", "diversity"), "ok", new=same_id)]
    out, removed = assemble(DATA, outcomes)
    assert [o.status for o in outcomes] == [
        "duplicate: same content as record b",
        "duplicate: same content as record c",
    ]
    assert out == DATA and removed == set()


def test_assemble_tells_samples_apart_by_their_history():
    """Same turn after a different conversation is different content: not a duplicate."""
    h = (("earlier question", "earlier answer"),)
    data = [Record(id="h", instruction="prompt x", output="answer to prompt x", history=h)]
    new = _new("h", "prompt x", "diversity")  # no history
    out, _ = assemble(data, [Outcome(Job("h", "diversity"), "ok", new=new)])
    assert [r.id for r in out] == ["h", new.id]


def test_assemble_checks_every_new_sample_after_an_unusable_one():
    """A failed job does not end the duplicate check: the second copy of a new sample is still caught."""
    x = _new("a", "new prompt", "diversity")
    outcomes = [
        Outcome(Job("a", "diversity"), "failed: timeout"),
        Outcome(Job("a", "diversity"), "ok", new=x),
        Outcome(Job("b", "diversity"), "ok", new=x),
    ]
    out, _ = assemble(DATA, outcomes)
    assert [o.status for o in outcomes] == ["failed: timeout", "ok", f"duplicate: same content as record {x.id}"]
    assert [r.id for r in out] == ["a", x.id, "b", "c", "d"]


def test_a_change_entry_holds_the_sample_before_and_after():
    new = _new("a", "clearer prompt", "quality")
    entry = change(Outcome(Job("a", "quality"), "ok", reply="r", new=new), DATA[0], removed=True)
    assert entry == {
        "axis": "quality",
        "op": "improve",
        "parent_id": "a",
        "status": "ok",
        "before": DATA[0].to_dict(),
        "result": "replaced",
        "id": new.id,
        "after": new.to_dict(),
    }
    kept = change(Outcome(Job("b", "diversity", ("a",)), "rejected: empty answer", reply="r"), DATA[1], removed=False)
    assert kept == {
        "axis": "diversity",
        "op": "diversify",
        "parent_id": "b",
        "status": "rejected: empty answer",
        "before": DATA[1].to_dict(),
        "hints": ["a"],
        "result": "kept_original",
        "reply": "r",
    }


def test_overlaps_count_every_sample_of_a_combination():
    flags = {"complexity": {"a", "b", "c"}, "quality": {"a", "b"}, "diversity": {"c"}}
    assert overlaps(flags) == {"complexity+diversity": 1, "complexity+quality": 2}
    assert overlaps({}) == {}


def test_report_counts_per_axis_and_keeps_each_rejection_reason_whole():
    new_a, new_c = _new("a", "simpler a", "complexity"), _new("c", "sibling of c", "diversity")
    outcomes = [
        Outcome(Job("a", "complexity"), "ok", new=new_a),
        Outcome(Job("b", "quality"), "rejected: degenerate answer (x: y)"),
        Outcome(Job("b", "complexity"), "failed: timeout"),
        Outcome(Job("c", "diversity"), "ok", new=new_c),
        Outcome(Job("d", "diversity"), "duplicate: same content as record a"),
    ]
    flags = {"complexity": {"a", "b"}, "quality": {"b"}, "diversity": {"c", "d"}}
    out, removed = assemble(DATA, outcomes)
    rep = report(DATA, out, outcomes, flags, removed)
    assert rep["per_axis"] == {
        "complexity": {"flagged": 2, "asked": 2, "added": 1, "unusable": 1, "duplicate": 0},
        "diversity": {"flagged": 2, "asked": 2, "added": 1, "unusable": 0, "duplicate": 1},
        "quality": {"flagged": 1, "asked": 1, "added": 0, "unusable": 1, "duplicate": 0},
    }
    assert rep["rejected"] == {"degenerate answer (x: y)": 1}
    assert (rep["removed"], rep["added"], rep["size_after"]) == (1, 2, 5)
