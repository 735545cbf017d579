"""Apply the three refinement operations to one round's flagged samples, recording every change.

A sample flagged on several axes is handled once, by the first axis in ``precedence``. Replacements (simplify,
improve) keep the dataset size; diversify adds a new sample beside its parent, capped at ``max_added_fraction`` of
the dataset (lowest kNN similarity first), so the dataset grows slowly, as in the paper. A sample that already
inspired a new one in an earlier round (its child is in the dataset) is not asked again: with a deterministic teacher
the same prompt gives the same child, which would only be dropped as a duplicate, and the cap goes to the next
sparsest sample instead. A teacher reply that cannot be parsed leaves the original in place and is counted, never
dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from middo.records import Record, content_id
from middo.refine import prompts
from middo.teachers.base import Sampling, Teacher

OPS = {"complexity": "simplify", "diversity": "diversify", "quality": "improve"}
FIRST_PROMPT = {"simplify": prompts.SIMPLIFY, "diversify": prompts.DIVERSIFY, "improve": prompts.IMPROVE}


@dataclass
class RefineResult:
    records: list[Record]
    changes: list[dict]
    report: dict = field(default_factory=dict)


def assign_axes(flags: Mapping[str, set[str]], precedence: Sequence[str]) -> tuple[dict[str, str], dict[str, int]]:
    """One axis per flagged id (first in ``precedence``), and the overlap counts for the report."""
    assigned: dict[str, str] = {}
    for axis in precedence:
        for rid in sorted(flags.get(axis, ())):
            assigned.setdefault(rid, axis)
    overlaps: Counter = Counter()
    ids = set().union(*flags.values()) if flags else set()
    for rid in ids:
        axes = tuple(a for a in precedence if rid in flags.get(a, ()))
        if len(axes) > 1:
            overlaps["+".join(axes)] += 1
    return assigned, dict(sorted(overlaps.items()))


def _derived(
    parent: Record, instruction: str, output: str, axis: str, op: str, round_: int, input_: str | None = None
) -> Record:
    inp = parent.input if input_ is None else input_
    return Record(
        id=content_id(instruction, inp, output, parent.system, parent.history),
        instruction=instruction,
        input=inp,
        output=output,
        system=parent.system,
        history=parent.history,
        parent_id=parent.id,
        round=round_,
        axis=axis,
        op=op,
        meta=dict(parent.meta),
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unless_copied(vals: dict | None, status: str, parent: Record) -> tuple[dict | None, str]:
    """A "rewrite" that is the parent's own instruction changes nothing (and, answered greedily, reproduces the
    parent, which would only be dropped as a duplicate): count it as unparseable and keep the original."""
    if vals is not None and _norm(vals["instruction"]) in (_norm(parent.prompt_text), _norm(parent.instruction)):
        if "response" not in vals or _norm(vals["response"]) == _norm(parent.output):
            return None, "unparseable: the reply repeats the original"
    return vals, status


def refine_records(
    records: Sequence[Record],
    flags: Mapping[str, set[str]],
    teacher: Teacher,
    sampling: Sampling,
    round_: int,
    precedence: Sequence[str] = ("quality", "complexity", "diversity"),
    max_added_fraction: float = 0.1,
    knn_sim: Mapping[str, float] | None = None,
) -> RefineResult:
    """Refine ``records`` given per-axis sets of flagged ids; returns the new dataset, changes and report."""
    by_id = {r.id: r for r in records}
    assigned, overlaps = assign_axes({a: set(ids) & by_id.keys() for a, ids in flags.items()}, precedence)
    inspired = {r.parent_id: r for r in records if r.op == "diversify" and r.parent_id}
    div = [rid for rid, a in assigned.items() if a == "diversity" and rid not in inspired]
    again = sorted(rid for rid, a in assigned.items() if a == "diversity" and rid in inspired)
    cap = int(max_added_fraction * len(records))
    div.sort(key=lambda rid: ((knn_sim or {}).get(rid, 0.0), rid))
    over_cap = set(div[cap:])
    skipped = over_cap | set(again)
    todo = [(rid, assigned[rid]) for rid in (r.id for r in records) if rid in assigned and rid not in skipped]

    # call 1: the rewrite (simplify/diversify: a new instruction; improve: instruction + response)
    first = [
        FIRST_PROMPT[OPS[axis]].format(prompt=by_id[rid].prompt_text, response=by_id[rid].output) for rid, axis in todo
    ]
    replies = teacher.complete(first, sampling) if first else []
    parsed: list[tuple[dict | None, str]] = [
        prompts.parse_fields(
            reply,
            ("instruction", "response") if axis == "quality" else ("instruction",),
            template=FIRST_PROMPT[OPS[axis]],
        )
        for reply, (_, axis) in zip(replies, todo)
    ]
    parsed = [_unless_copied(vals, status, by_id[rid]) for (vals, status), (rid, _) in zip(parsed, todo)]
    # call 2: a fresh response to each new instruction (improve already has its response)
    need_answer = [i for i, ((vals, _), (_, axis)) in enumerate(zip(parsed, todo)) if vals and axis != "quality"]
    answers = teacher.complete([parsed[i][0]["instruction"] for i in need_answer], sampling) if need_answer else []
    answer_of = dict(zip(need_answer, answers))

    replaced: dict[str, Record] = {}
    added: dict[str, Record] = {}
    changes: list[dict] = []
    status_counts: Counter = Counter()
    for i, ((rid, axis), (vals, status)) in enumerate(zip(todo, parsed)):
        parent, op = by_id[rid], OPS[axis]
        new = None
        if vals is not None:
            if axis == "quality":
                new = _derived(parent, vals["instruction"], vals["response"], axis, op, round_, input_="")
            else:
                answer = prompts.clean(answer_of.get(i) or "", strip_fences=False)
                if answer:
                    new = _derived(
                        parent,
                        vals["instruction"],
                        answer,
                        axis,
                        op,
                        round_,
                        input_="" if axis == "diversity" else parent.input,
                    )
                else:
                    status = "unparseable: empty answer to the new instruction"
        status_counts[status.split(":")[0]] += 1
        entry = {"axis": axis, "op": op, "parent_id": rid, "status": status, "before": parent.to_dict()}
        if new is None:
            entry["result"] = "kept_original"
        else:
            (added if axis == "diversity" else replaced)[rid] = new
            entry.update(result="added" if axis == "diversity" else "replaced", id=new.id, after=new.to_dict())
        changes.append(entry)
    changes += [_skipped(rid, f"over the cap of {cap} new samples this round") for rid in sorted(over_cap)]
    changes += [_skipped(rid, f"already inspired {inspired[rid].id} (round {inspired[rid].round})") for rid in again]

    out: list[Record] = []
    for rec in records:
        out.append(replaced.get(rec.id, rec))
        if rec.id in added:
            out.append(added[rec.id])
    out = _dedupe_ids(out, changes)
    per_axis = {
        axis: {
            "flagged": len(flags.get(axis, ())),
            "handled": sum(1 for _, a in todo if a == axis),
            "changed": sum(1 for c in changes if c["axis"] == axis and c["result"] != "kept_original"),
            "kept_unparseable": sum(1 for c in changes if c["axis"] == axis and c["status"].startswith("unparse")),
        }
        for axis in OPS
    }
    kept = len(records) - len(replaced)
    report = {
        "size_before": len(records),
        "size_after": len(out),
        "kept": kept,
        "replaced": len(replaced),
        "added": len(added),
        "per_axis": per_axis,
        "overlaps": overlaps,
        "reply_status": dict(status_counts),
        "diversity_cap": cap,
        "diversity_over_cap": len(over_cap),
        "diversity_already_inspired": len(again),
        "teacher_calls": len(first) + len(need_answer),
    }
    report["dropped_duplicates"] = kept + len(replaced) + len(added) - len(out)  # so kept+replaced+added-dropped=out
    return RefineResult(out, changes, report)


def _skipped(rid: str, reason: str) -> dict:
    """The change-log entry of a diversity candidate that was not sent to the teacher."""
    return {
        "axis": "diversity",
        "op": "diversify",
        "parent_id": rid,
        "status": "skipped",
        "result": "kept_original",
        "reason": reason,
    }


def _dedupe_ids(records: list[Record], changes: list[dict]) -> list[Record]:
    """A teacher can reproduce an existing sample verbatim (same content id); keep the first, record the rest."""
    seen: set[str] = set()
    out = []
    for rec in records:
        if rec.id in seen:
            changes.append(
                {
                    "axis": rec.axis,
                    "op": rec.op,
                    "parent_id": rec.parent_id,
                    "id": rec.id,
                    "status": "duplicate",
                    "result": "dropped",
                    "reason": "same content as an earlier record",
                }
            )
            continue
        seen.add(rec.id)
        out.append(rec)
    return out
