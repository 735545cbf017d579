"""The refine engine with scripted teachers (well-formed replies, and each kind of junk on demand) and, once, with a
real local teacher (the default model, in-process, greedy) for the wiring."""

import dataclasses
import json

import pytest
from scripted_teacher import NEW_PROMPT, ScriptedTeacher, answer_to

from middo.records import Record, content_id
from middo.refine import prompts
from middo.refine.engine import refine_records
from middo.refine.merge import OPS, assign_axes, overlaps
from middo.refine.prompts import ANSWER, answer_prompt, rewrite_prompt
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
WITH_INPUT = Record(id="inp", instruction="Translate the sentence into French.", input="The cat sleeps.", output="?")
DATA = [*RECORDS, WITH_INPUT]
ONE_EACH = {"complexity": {"hard"}, "quality": {"poor"}, "diversity": {"rare"}}


def _refine(records, flags, teacher, merge="reference", **kwargs):
    return refine_records(records, flags, teacher, Sampling(), round_=1, merge=merge, **kwargs)


def _assert_counts_add_up(res, records):
    """The report's counts against each other and against the data itself."""
    rep, out = res.report, res.records
    assert rep["size_before"] == len(records)
    assert rep["size_after"] == len(out) == rep["size_before"] - rep["removed"] + rep["added"]
    assert rep["kept"] == rep["size_before"] - rep["removed"] == sum(r.id in {x.id for x in records} for r in out)
    assert rep["removed"] == sum(rep["removed_by"].values())
    assert (
        rep["added"]
        == sum(rep["added_by_axis"].values())
        == sum(r.parent_id is not None for r in out) - sum(r.parent_id is not None for r in records)
    )
    assert len({r.id for r in out}) == len(out)  # no id twice
    gone = {r.id for r in records} - {r.id for r in out}
    assert len(gone) == rep["removed"]
    for rid in gone:  # an original goes only when a rewrite replaced it
        assert any(r.parent_id == rid and r.op in ("simplify", "improve") for r in out)
    assert rep["unusable"] == sum(rep["unusable_by"].values()) <= rep["asked"]
    assert sum(rep["rejected"].values()) == rep["unusable_by"]["rejected"]
    asked = [c for c in res.changes if c["status"] != "skipped"]
    assert len(asked) == rep["asked"] == sum(rep["reply_status"].values())
    assert sum(c["result"] in ("replaced", "added") for c in asked) == rep["added"]


def test_assign_axes_by_precedence():
    flags = {"complexity": {"a", "b"}, "quality": {"b", "c"}, "diversity": {"c", "d"}}
    assert assign_axes(flags, ["quality", "complexity", "diversity"]) == {
        "b": "quality",
        "c": "quality",
        "a": "complexity",
        "d": "diversity",
    }
    assigned = assign_axes(flags, ["diversity", "complexity", "quality"])
    assert assigned["c"] == "diversity" and assigned["b"] == "complexity"
    assert overlaps(flags) == {"complexity+quality": 1, "diversity+quality": 1}


def test_each_operation_asks_for_a_new_prompt_then_a_fresh_answer():
    teacher = ScriptedTeacher()
    res = _refine(RECORDS, ONE_EACH, teacher, neighbors={"rare": ["ok1", "hard"]})
    by_id = {r.id: r for r in RECORDS}
    rewrites, answers = teacher.calls  # two batches: every rewrite first, then every answer
    assert rewrites == [
        rewrite_prompt("simplify", by_id["hard"].prompt_text),
        rewrite_prompt("improve", by_id["poor"].prompt_text),
        rewrite_prompt("diversify", by_id["rare"].prompt_text, [by_id["ok1"].prompt_text, by_id["hard"].prompt_text]),
    ]
    assert "berlin i think" not in rewrites[1]  # improve rewrites the prompt only; the answer is made afresh
    new_prompts = {
        rid: NEW_PROMPT[op](by_id[rid].prompt_text)
        for rid, op in (("hard", "simplify"), ("poor", "improve"), ("rare", "diversify"))
    }
    assert answers == [answer_prompt(p) for p in new_prompts.values()]
    children = {r.parent_id: r for r in res.records if r.parent_id}
    for rid, axis in (("hard", "complexity"), ("poor", "quality"), ("rare", "diversity")):
        new = children[rid]
        assert (new.instruction, new.input, new.output) == (new_prompts[rid], "", answer_to(new_prompts[rid]))
        assert (new.parent_id, new.round, new.axis, new.op) == (rid, 1, axis, OPS[axis])
        assert new.id == content_id(new.instruction, "", new.output)
    assert [r.id for r in res.records] == [
        children["hard"].id,
        children["poor"].id,
        "rare",
        children["rare"].id,
        "ok1",
        "ok2",
    ]
    change = {c["parent_id"]: c for c in res.changes}
    assert {rid: (c["status"], c["result"]) for rid, c in change.items()} == {
        "hard": ("ok", "replaced"),
        "poor": ("ok", "replaced"),
        "rare": ("ok", "added"),
    }
    assert change["rare"]["hints"] == ["ok1", "hard"]
    assert res.report["teacher_calls"] == 6 and res.report["diversify_without_hints"] == 0
    _assert_counts_add_up(res, RECORDS)


def test_a_record_with_input_becomes_one_prompt():
    teacher = ScriptedTeacher()
    res = _refine(DATA, {"complexity": {"inp"}}, teacher)
    assert teacher.calls[0] == [rewrite_prompt("simplify", "Translate the sentence into French.\nThe cat sleeps.")]
    new = next(r for r in res.records if r.parent_id == "inp")
    assert (new.instruction, new.input) == ("In plain words: Translate the sentence into French. The cat sleeps.", "")
    assert "inp" not in {r.id for r in res.records}
    _assert_counts_add_up(res, DATA)


def _twenty():
    records = [
        Record(
            id=f"r{i:02d}", instruction=f"Question {i}: explain topic number {i} to a student.", output=f"Topic {i}."
        )
        for i in range(20)
    ]
    neighbors = {r.id: [records[(i + 1) % 20].id, records[(i + 2) % 20].id] for i, r in enumerate(records)}
    return records, neighbors


# hand-chosen: r04 on all three axes; r03 on complexity+quality, r06 on quality+diversity, r11 on complexity+diversity
C = {"r01", "r02", "r03", "r04", "r10", "r11"}
Q = {"r03", "r04", "r05", "r06", "r12"}
D = {"r04", "r06", "r07", "r08", "r11", "r13"}


def test_reference_merge_on_twenty_records():
    records, neighbors = _twenty()
    # The reference's rules, written out: every flagged (sample, axis) pair yields one new sample; complexity- and
    # quality-flagged originals are removed (once, even when flagged on both); diversity-flagged originals stay.
    expected_removed = C | Q
    expected_added = {"complexity": len(C), "diversity": len(D), "quality": len(Q)}
    expected_size = len(records) - len(expected_removed) + sum(expected_added.values())
    expected_kept = [r.id for r in records if r.id not in expected_removed]
    assert (len(expected_removed), expected_added, expected_size) == (
        9,
        {"complexity": 6, "diversity": 6, "quality": 5},
        28,
    )

    res = _refine(records, {"complexity": C, "quality": Q, "diversity": D}, ScriptedTeacher(), neighbors=neighbors)
    out, rep = res.records, res.report
    assert len(out) == rep["size_after"] == expected_size
    assert {r.id for r in records} - {r.id for r in out} == expected_removed
    assert [r.id for r in out if r.parent_id is None] == expected_kept
    assert rep["added_by_axis"] == expected_added and rep["added"] == 17
    assert rep["removed"] == 9 and rep["removed_by"] == {"complexity": 4, "quality": 3, "complexity+quality": 2}
    assert rep["kept"] == 11 and rep["asked"] == 17 and rep["unusable"] == 0 and rep["duplicate"] == 0
    expected_children = {
        (rid, OPS[axis]) for axis, ids in (("complexity", C), ("quality", Q), ("diversity", D)) for rid in ids
    }
    assert sorted((r.parent_id, r.op) for r in out if r.parent_id) == sorted(expected_children)
    assert sorted(r.op for r in out if r.parent_id == "r04") == ["diversify", "improve", "simplify"]
    assert rep["overlaps"] == {
        "complexity+diversity": 1,
        "complexity+diversity+quality": 1,
        "complexity+quality": 1,
        "diversity+quality": 1,
    }
    _assert_counts_add_up(res, records)


def test_reference_merge_keeps_the_original_when_a_rewrite_is_unusable():
    """Our deviation: the reference drops a flagged original even when its rewrite failed; we keep it."""
    records, neighbors = _twenty()
    teacher = ScriptedTeacher(
        {
            ("improve", "topic number 3 "): None,  # r03 (complexity+quality): its improve call fails
            ("simplify", "topic number 1 "): "I'm sorry, but I can't help with that.",  # r01: unparseable
            ("answer", "topic number 5 "): "I'm sorry, but I can't help with that.",  # r05: the answer is a refusal
            ("diversify", "topic number 7 "): None,  # r07: nothing to add, r07 stays as it always would
        }
    )
    res = _refine(records, {"complexity": C, "quality": Q, "diversity": D}, teacher, neighbors=neighbors)
    # by the rules: an original with an unusable replacing rewrite stays; its usable rewrites are still added
    unusable = {("r03", "quality"), ("r01", "complexity"), ("r05", "quality"), ("r07", "diversity")}
    expected_removed = (C | Q) - {"r03", "r01", "r05"}
    expected_added = len(C) + len(Q) + len(D) - len(unusable)
    assert {r.id for r in records} - {r.id for r in res.records} == expected_removed
    assert res.report["added"] == expected_added == 13
    assert len(res.records) == len(records) - len(expected_removed) + expected_added == 27
    assert [r.op for r in res.records if r.parent_id == "r03"] == ["simplify"]
    assert {"r03", "r01", "r05"} <= {r.id for r in res.records}
    status = {(c["parent_id"], c["axis"]): c["status"] for c in res.changes if c["status"] != "ok"}
    assert status == {
        ("r01", "complexity"): "unparseable: no <prompt> block",
        ("r03", "quality"): "failed: no reply (call failed)",
        ("r05", "quality"): "rejected: refusal in the answer",
        ("r07", "diversity"): "failed: no reply (call failed)",
    }
    assert res.report["unusable_by"] == {"failed": 2, "unparseable": 1, "rejected": 1}
    r03 = next(c for c in res.changes if c["parent_id"] == "r03" and c["axis"] == "complexity")
    assert r03["result"] == "added"  # the simplified r03 joins the data, beside its kept original
    _assert_counts_add_up(res, records)


def test_reference_merge_keeps_duplicate_originals_the_reference_would_collapse():
    """Our deviation (docs/fidelity.md, merge row): json_intersection.py intersects the remain sets keyed by
    (instruction, output), so two originals with the same content become one; we keep both, as they came in."""
    records, neighbors = _twenty()
    twin = dataclasses.replace(records[19], id="r19-twin")  # r19's content under a second id, flagged on no axis
    records = [*records, twin]
    neighbors[twin.id] = neighbors["r19"]
    res = _refine(records, {"complexity": C, "quality": Q, "diversity": D}, ScriptedTeacher(), neighbors=neighbors)
    kept = [r for r in res.records if (r.instruction, r.output) == (twin.instruction, twin.output)]
    assert [r.id for r in kept] == ["r19", "r19-twin"]
    assert res.report["removed"] == 9 and res.report["size_after"] == len(records) - 9 + 17 == 29
    _assert_counts_add_up(res, records)


def test_a_new_sample_already_in_the_data_is_not_added():
    ok1 = dataclasses.replace(RECORDS[3], id=content_id(RECORDS[3].instruction, "", RECORDS[3].output))
    records = [*RECORDS[:3], ok1, RECORDS[4]]
    teacher = ScriptedTeacher(
        {
            ("improve", "capitl"): f"Step 4 - Final prompt: <prompt>{ok1.instruction}</prompt>",
            ("answer", ok1.instruction): ok1.output,  # poor's improved sample is ok1 itself
            ("simplify", "Derive"): "<prompt>State the Euler-Lagrange equation.</prompt>",
            ("diversify", "fornyr"): "<prompt>State the Euler-Lagrange equation.</prompt>",  # the same as hard's
            ("answer", "State the Euler"): "d/dt(dL/dq') = dL/dq, for each coordinate q.",
        }
    )
    res = _refine(records, {"quality": {"poor"}, "complexity": {"hard"}, "diversity": {"rare"}}, teacher)
    status = {c["parent_id"]: c["status"] for c in res.changes}
    assert status["poor"] == f"duplicate: same content as record {ok1.id}"
    hard_child = next(r for r in res.records if r.parent_id == "hard")
    assert status["hard"] == "ok" and status["rare"] == f"duplicate: same content as record {hard_child.id}"
    assert [r.id for r in res.records] == [hard_child.id, "poor", "rare", ok1.id, "ok2"]  # poor and rare kept
    rep = res.report
    assert (rep["removed"], rep["added"], rep["duplicate"], rep["unusable"]) == (1, 1, 2, 0)
    _assert_counts_add_up(res, records)


def test_precedence_merge_handles_a_sample_once_and_caps_diversify():
    flags = {"complexity": {"hard", "ok1"}, "quality": {"hard"}, "diversity": {"rare", "ok1", "ok2"}}
    knn = {"rare": 0.1, "ok1": 0.5, "ok2": 0.3}
    teacher = ScriptedTeacher()
    res = _refine(RECORDS, flags, teacher, merge="precedence", max_added_fraction=0.2, knn_sim=knn)
    asked = {(c["parent_id"], c["op"]) for c in res.changes if c["status"] != "skipped"}
    assert asked == {("hard", "improve"), ("ok1", "simplify"), ("rare", "diversify")}  # ok2: over the cap of 1
    rep = res.report
    assert (rep["diversity_cap"], rep["diversity_over_cap"], rep["removed"], rep["added"]) == (1, 1, 2, 3)
    assert len(res.records) == 5 - 2 + 3
    _assert_counts_add_up(res, RECORDS)


def test_precedence_merge_asks_a_sample_to_inspire_only_once():
    """Round 2 must not re-ask the teacher about round 1's parent (it would return the same child again)."""
    flags, knn = {"diversity": {"rare", "ok2"}}, {"rare": 0.1, "ok2": 0.3}
    first = _refine(RECORDS, flags, ScriptedTeacher(), merge="precedence", max_added_fraction=0.2, knn_sim=knn)
    child = next(r for r in first.records if r.parent_id == "rare")  # the sparsest one got the one slot
    second = refine_records(
        first.records,
        flags,
        ScriptedTeacher(),
        Sampling(),
        round_=2,
        merge="precedence",
        max_added_fraction=0.2,
        knn_sim=knn,
    )
    assert second.report["diversity_already_inspired"] == 1
    skipped = next(c for c in second.changes if c["parent_id"] == "rare")
    assert skipped["status"] == "skipped" and child.id in skipped["reason"]
    assert [c["parent_id"] for c in second.changes if c["status"] != "skipped"] == ["ok2"]


def test_a_rewrite_that_copies_the_original_keeps_the_original():
    teacher = ScriptedTeacher(
        {
            ("simplify", "Derive"): f"Step 4 - Final prompt: <prompt>{RECORDS[0].instruction}</prompt>",
            ("diversify", "fornyr"): f"<prompt>{RECORDS[2].instruction}</prompt>",
        }
    )
    res = _refine(RECORDS, {"complexity": {"hard"}, "diversity": {"rare"}}, teacher)
    assert res.records == RECORDS
    assert {c["parent_id"]: c["status"] for c in res.changes} == {
        "hard": "rejected: same instruction as the original",
        "rare": "rejected: same instruction as the original",
    }
    assert res.report["teacher_calls"] == 2  # no answer was asked for a rejected prompt
    _assert_counts_add_up(res, RECORDS)


def test_junk_is_rejected_with_its_reason_and_the_original_kept():
    teacher = ScriptedTeacher(
        {
            ("simplify", "Derive"): "<prompt>I'm sorry, but I can't help with that.</prompt>",
            ("improve", "capitl"): "Step 4 - Final prompt: <prompt>What is the capital of France?</prompt>",
            ("answer", "capital of France"): "What is the capital of France?",
            ("diversify", "fornyr"): "<prompt>Rewrite it as:\n\nInvent a new word for a poem.</prompt>",
            ("answer", "The cat sleeps"): "\U0001f600" * 6,
            # the analysis inside the final block: a leak the parser cannot see, so validation must
            (
                "improve",
                "Give a synonym",
            ): "<prompt>Step 1 - Problems: too short.\nGive two synonyms for big.</prompt>",
        }
    )
    flags = {"complexity": {"hard", "inp"}, "quality": {"poor", "ok1"}, "diversity": {"rare"}}
    res = _refine(DATA, flags, teacher)
    assert res.records == DATA  # every original kept, in order, unchanged
    assert {c["parent_id"]: c["status"] for c in res.changes} == {
        "hard": "rejected: refusal in the instruction",
        "poor": "rejected: answer repeats the instruction",
        "rare": "rejected: label left in the instruction",
        "ok1": "rejected: analysis left in the instruction",
        "inp": "rejected: degenerate answer (no letters or digits)",
    }
    rep = res.report
    assert (rep["asked"], rep["unusable"], rep["unusable_by"]["rejected"], len(rep["rejected"])) == (5, 5, 5, 5)
    assert rep["teacher_calls"] == 7  # only the two valid new prompts were sent to be answered
    bad = next(c for c in res.changes if c["parent_id"] == "inp")
    assert bad["reply"].startswith("\U0001f600") and bad["result"] == "kept_original"
    _assert_counts_add_up(res, DATA)


def test_analysis_without_a_final_block_is_never_used():
    analysis = "Step 1 - Difficulties: jargon.\nStep 2 - Plan: define it.\nStep 3 - Draft: Explain the terms."
    teacher = ScriptedTeacher({("simplify", "Derive"): analysis, ("improve", "capitl"): None})
    res = _refine(RECORDS, {"complexity": {"hard"}, "quality": {"poor"}}, teacher)
    assert res.report["unusable_by"] == {"failed": 1, "unparseable": 1, "rejected": 0}
    assert {c["parent_id"]: c["status"] for c in res.changes} == {
        "hard": "unparseable: no <prompt> block",
        "poor": "failed: no reply (call failed)",
    }
    assert res.records == RECORDS and res.report["teacher_calls"] == 2
    _assert_counts_add_up(res, RECORDS)


def test_an_unknown_merge_rule_is_refused():
    with pytest.raises(ValueError, match="merge must be 'reference' or 'precedence', got 'paper'"):
        _refine(RECORDS, ONE_EACH, ScriptedTeacher(), merge="paper")


class JsonTeacher(ScriptedTeacher):
    """Structured output: rewrites asked with a schema come back as JSON; keeps every call's sampling."""

    def __init__(self):
        super().__init__()
        self.samplings = []

    def complete(self, batch, sampling):
        self.samplings.append(sampling)
        replies = super().complete(batch, sampling)
        if sampling.response_schema is None:
            return replies
        parsed = [prompts.parse_prompt(r, fallback=True)[0] for r in replies]
        return [json.dumps({"analysis": "Step 1 - Difficulties: none.", "prompt": p}) for p in parsed]


def test_structured_output_is_asked_of_the_rewrites_only_and_its_json_is_read():
    teacher = JsonTeacher()
    sampling = Sampling(temperature=1.0, response_schema=prompts.rewrite_schema())
    res = refine_records(RECORDS, ONE_EACH, teacher, sampling, round_=1, merge="reference")
    rewrites, answers = teacher.samplings
    assert rewrites == sampling and answers == dataclasses.replace(sampling, response_schema=None)
    by_id = {r.id: r for r in RECORDS}
    children = {r.parent_id: r for r in res.records if r.parent_id}
    for rid, op in (("hard", "simplify"), ("poor", "improve"), ("rare", "diversify")):
        assert children[rid].instruction == NEW_PROMPT[op](by_id[rid].prompt_text)
        assert children[rid].output == answer_to(children[rid].instruction)
    assert {c["status"] for c in res.changes} == {"ok"} and res.report["added"] == 3
    _assert_counts_add_up(res, RECORDS)


class Recording:
    """Wraps a teacher and keeps every batch it was asked."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.backend, self.model = inner.backend, inner.model

    def complete(self, batch, sampling):
        self.calls.append(list(batch))
        return self.inner.complete(batch, sampling)


@pytest.mark.slow
def test_a_real_local_teacher_is_asked_the_right_prompts(base_model_dir, one_torch_thread):
    """The wiring with a real model: what its 135M replies are worth is not this test's question, so it asserts what
    holds for any reply (the requests, one change per job, counts that add up), never one of two outcomes."""
    from middo.teachers.transformers_backend import TransformersTeacher

    teacher = Recording(TransformersTeacher(base_model_dir, device="cpu", dtype="float32"))
    res = refine_records(RECORDS, ONE_EACH, teacher, Sampling(max_new_tokens=24), round_=1, merge="reference")
    by_id = {r.id: r for r in RECORDS}
    assert teacher.calls[0] == [
        rewrite_prompt("simplify", by_id["hard"].prompt_text),
        rewrite_prompt("improve", by_id["poor"].prompt_text),
        rewrite_prompt("diversify", by_id["rare"].prompt_text),
    ]
    asked_to_answer = teacher.calls[1] if len(teacher.calls) > 1 else []  # none when no rewrite was usable
    new = [r for r in res.records if r.parent_id is not None]
    assert {answer_prompt(r.instruction) for r in new} <= set(asked_to_answer)  # each new prompt was answered
    assert all(m.startswith(ANSWER.split("{prompt}")[0]) for m in asked_to_answer)  # and the 2nd call only answers
    ops = {c["parent_id"]: c["op"] for c in res.changes}
    assert ops == {"hard": "simplify", "poor": "improve", "rare": "diversify"}
    assert res.report["teacher_calls"] == 3 + len(asked_to_answer)
    assert [r for r in res.records if r.parent_id is None][-2:] == RECORDS[3:]  # untouched samples pass through
    _assert_counts_add_up(res, RECORDS)


def test_a_local_teachers_reply_cut_at_max_new_tokens_is_rejected_as_such(base_model_dir, tmp_path, one_torch_thread):
    """A real local teacher (a random tiny model, which never ends within 3 tokens) with max_new_tokens 3: every
    rewrite is cut, so every job is rejected with that reason and counted, before any answer is asked."""
    from tiny_models import tiny_model

    from middo.teachers.transformers_backend import TransformersTeacher

    teacher = Recording(TransformersTeacher(tiny_model(base_model_dir, tmp_path / "tiny"), "cpu", "float32"))
    sampling = Sampling(max_new_tokens=3, temperature=1.0)
    res = refine_records(RECORDS, ONE_EACH, teacher, sampling, round_=1, merge="reference")
    assert len(teacher.calls) == 1 and res.report["teacher_calls"] == 3  # no answer asked for a cut prompt
    assert {c["parent_id"]: c["status"] for c in res.changes} == dict.fromkeys(
        ("hard", "poor", "rare"), "rejected: cut at max_new_tokens"
    )
    assert all(c["reply"].strip() for c in res.changes)  # the cut reply is kept in the log, to read beside its reason
    assert res.report["rejected"] == {"cut at max_new_tokens": 3} and res.report["unusable"] == 3
    assert res.records == RECORDS
    _assert_counts_add_up(res, RECORDS)


def test_a_new_sample_does_not_inherit_its_parents_meta():
    """A parent's labels (here a category) describe the parent; the new sample reaches them through its lineage."""
    labelled = [dataclasses.replace(r, meta={"category": "hard", "source": "seed"}) for r in RECORDS]
    res = _refine(labelled, ONE_EACH, ScriptedTeacher(), neighbors={"rare": ["ok1"]})
    children = {r.parent_id: r for r in res.records if r.parent_id}
    assert set(children) == {"hard", "poor", "rare"}
    for rid, axis in (("hard", "complexity"), ("poor", "quality"), ("rare", "diversity")):
        new = children[rid]
        assert new.meta == {} and "meta" not in new.to_dict()
        assert (new.parent_id, new.round, new.axis, new.op) == (rid, 1, axis, OPS[axis])
    assert next(r for r in res.records if r.id == "rare").meta == {"category": "hard", "source": "seed"}


def test_an_untagged_diversify_reply_must_read_as_a_prompt():
    """Without a <prompt> block nothing marks the reply as a prompt: an essay is rejected, a question is used."""
    essay = (
        "The fornyrðislag meter is an old Germanic verse form. It was used in the Poetic Edda and in many runic "
        "inscriptions."
    )
    teacher = ScriptedTeacher(
        {("diversify", "fornyr"): essay, ("diversify", "synonym"): "Name three synonyms for small"}
    )
    res = _refine(RECORDS, {"diversity": {"rare", "ok1"}}, teacher)
    assert {c["parent_id"]: c["status"] for c in res.changes} == {
        "rare": "rejected: untagged reply does not read as a prompt",
        "ok1": "fallback",
    }
    child = next(r for r in res.records if r.parent_id == "ok1")
    assert child.instruction == "Name three synonyms for small" and child.op == "diversify"
    assert res.report["teacher_calls"] == 3  # the essay was never sent to be answered
    _assert_counts_add_up(res, RECORDS)
