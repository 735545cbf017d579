"""Which flagged samples the teacher is asked about, and how the new samples merge into the next round's data.

Two rules, chosen by ``refine.merge``:

- ``reference``: the paper's, as the authors' code applies it (their per-axis synthesis scripts, then
  ``json_intersection.py`` and ``json_merge.py``). The axes are independent: each (sample, flagged axis) pair is one
  request. Complexity- and quality-flagged originals are removed and replaced by their rewrites, so a sample flagged
  on both yields two new samples (one simplified, one improved) and is removed once; every diversity-flagged sample
  stays and adds one new sample; nothing is capped.
- ``precedence``: ours, for slower growth. A sample flagged on several axes is handled once, by the first axis in
  ``precedence``; new diversify samples are capped at ``max_added_fraction`` of the data (sparsest first); a sample
  whose child is already in the data is not asked again (a deterministic teacher would only repeat the child).

Both share one safety rule the reference does not have: an original is removed only when every rewrite meant to
replace it enters the data. A rewrite that is unusable (failed call, unparseable reply, rejected by validation) or
whose content is already in the data (an exact duplicate, not added) leaves the original in place, so a failing
teacher never costs data; the reference would have dropped the original regardless.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from middo.records import AXES, Record, content_id

OPS = {"complexity": "simplify", "diversity": "diversify", "quality": "improve"}
REPLACING = ("complexity", "quality")  # their rewrites replace the original; a diversity sample adds beside it
UNUSABLE = ("failed", "unparseable", "rejected")  # status categories that count against refine.max_failed_fraction


@dataclass(frozen=True)
class Job:
    """One request to the teacher: refine sample ``rid`` along ``axis``; ``hints`` are neighbour ids (diversify)."""

    rid: str
    axis: str
    hints: tuple[str, ...] = ()

    @property
    def op(self) -> str:
        return OPS[self.axis]


@dataclass
class Outcome:
    """What became of a job: the new sample, or the reason there is none (and the reply, to read beside it)."""

    job: Job
    status: str = ""
    reply: str | None = None
    instruction: str | None = None
    new: Record | None = None

    @property
    def category(self) -> str:
        return self.status.split(":")[0]

    def reject(self, status: str, reply: str | None) -> None:
        self.status, self.reply, self.instruction, self.new = status, reply, None, None


def _hints(rid: str, neighbors: Mapping[str, Sequence[str]], ids: set[str]) -> tuple[str, ...]:
    """The sample's neighbours that are in the data (a stale id is skipped), most similar first."""
    return tuple(n for n in neighbors.get(rid, ()) if n in ids and n != rid)


def reference_jobs(
    records: Sequence[Record], flags: Mapping[str, set[str]], neighbors: Mapping[str, Sequence[str]]
) -> list[Job]:
    """Every flagged (sample, axis) pair, in data order and then axis order."""
    ids = {r.id for r in records}
    return [
        Job(r.id, axis, _hints(r.id, neighbors, ids) if axis == "diversity" else ())
        for r in records
        for axis in AXES
        if r.id in flags.get(axis, ())
    ]


def assign_axes(flags: Mapping[str, set[str]], precedence: Sequence[str]) -> dict[str, str]:
    """One axis per flagged id: the first in ``precedence`` that flagged it."""
    assigned: dict[str, str] = {}
    for axis in precedence:
        for rid in sorted(flags.get(axis, ())):
            assigned.setdefault(rid, axis)
    return assigned


def precedence_jobs(
    records: Sequence[Record],
    flags: Mapping[str, set[str]],
    neighbors: Mapping[str, Sequence[str]],
    precedence: Sequence[str],
    max_added_fraction: float,
    knn_sim: Mapping[str, float],
) -> tuple[list[Job], list[dict], dict]:
    """One job per flagged sample, diversify capped; returns the jobs, the change-log entries of the samples left
    out, and the cap's numbers for the report."""
    ids = {r.id for r in records}
    assigned = assign_axes(flags, precedence)
    inspired = {r.parent_id: r for r in records if r.op == "diversify" and r.parent_id}
    div = sorted(
        (rid for rid, a in assigned.items() if a == "diversity" and rid not in inspired),
        key=lambda rid: (knn_sim.get(rid, 0.0), rid),
    )
    again = sorted(rid for rid, a in assigned.items() if a == "diversity" and rid in inspired)
    cap = int(max_added_fraction * len(records))
    skipped = set(div[cap:]) | set(again)
    jobs = [
        Job(r.id, assigned[r.id], _hints(r.id, neighbors, ids) if assigned[r.id] == "diversity" else ())
        for r in records
        if r.id in assigned and r.id not in skipped
    ]
    left_out = [_skipped(rid, f"over the cap of {cap} new samples this round") for rid in div[cap:]]
    left_out += [_skipped(rid, f"already inspired {inspired[rid].id} (round {inspired[rid].round})") for rid in again]
    numbers = {"diversity_cap": cap, "diversity_over_cap": len(div[cap:]), "diversity_already_inspired": len(again)}
    return jobs, left_out, numbers


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


def assemble(records: Sequence[Record], outcomes: Sequence[Outcome]) -> tuple[list[Record], set[str]]:
    """The next dataset, and the ids of the originals it no longer holds.

    A new sample whose content is already in the data (or was made earlier in this round) is not added; its outcome
    becomes ``duplicate``. Each kept original stays in its place; the new samples follow their parent, in job order.
    """
    seen: dict[str, str] = {}  # content id (and record id) -> the record that holds it
    for r in records:
        seen.setdefault(content_id(r.instruction, r.input, r.output, r.system, r.history), r.id)
        seen.setdefault(r.id, r.id)
    for o in outcomes:
        if o.new is None:
            continue
        if o.new.id in seen:
            o.reject(f"duplicate: same content as record {seen[o.new.id]}", None)
        else:
            seen[o.new.id] = o.new.id
    by_parent: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_parent[o.job.rid].append(o)
    removed = {rid for rid, group in by_parent.items() if _replaced(group)}
    out: list[Record] = []
    for r in records:
        if r.id not in removed:
            out.append(r)
        out += [o.new for o in by_parent.get(r.id, ()) if o.new is not None]
    return out, removed


def _replaced(group: Sequence[Outcome]) -> bool:
    """Safety rule: an original goes only when every rewrite meant to replace it made it into the data."""
    replacing = [o for o in group if o.job.axis in REPLACING]
    return bool(replacing) and all(o.new is not None for o in replacing)


def change(o: Outcome, parent: Record, removed: bool) -> dict:
    """The change-log entry of one job: what was asked, what came back and what it did to the data."""
    job = o.job
    entry = {"axis": job.axis, "op": job.op, "parent_id": job.rid, "status": o.status, "before": parent.to_dict()}
    if o.job.axis == "diversity":
        entry["hints"] = list(o.job.hints)
    if o.new is None:
        entry.update(result="kept_original", reply=o.reply)
    else:
        entry.update(result="replaced" if removed else "added", id=o.new.id, after=o.new.to_dict())
    return entry


def overlaps(flags: Mapping[str, set[str]]) -> dict[str, int]:
    """How many samples each combination of two or more axes flagged (``complexity+quality``, ...)."""
    counts: Counter = Counter()
    for rid in set().union(*flags.values()) if flags else set():
        axes = [a for a in AXES if rid in flags.get(a, ())]
        if len(axes) > 1:
            counts["+".join(axes)] += 1
    return dict(sorted(counts.items()))


def report(
    records: Sequence[Record],
    out: Sequence[Record],
    outcomes: Sequence[Outcome],
    flags: Mapping[str, set[str]],
    removed: set[str],
) -> dict:
    """Counts that add up: ``size_after == size_before - removed + added``, ``kept == size_before - removed``, and
    every asked job ends as a new sample or an original kept for a counted reason."""
    cats = Counter(o.category for o in outcomes)
    replaced_on: dict[str, list[str]] = defaultdict(list)
    for o in outcomes:
        if o.job.rid in removed and o.job.axis in REPLACING:
            replaced_on[o.job.rid].append(o.job.axis)
    removed_by = Counter("+".join(sorted(axes)) for axes in replaced_on.values())
    added_by = Counter(o.job.axis for o in outcomes if o.new is not None)
    per_axis = {
        axis: {
            "flagged": len(flags.get(axis, ())),
            "asked": sum(o.job.axis == axis for o in outcomes),
            "added": added_by[axis],
            "unusable": sum(o.job.axis == axis and o.category in UNUSABLE for o in outcomes),
            "duplicate": sum(o.job.axis == axis and o.category == "duplicate" for o in outcomes),
        }
        for axis in AXES
    }
    return {
        "size_before": len(records),
        "removed": len(removed),
        "removed_by": {k: removed_by[k] for k in ("complexity", "quality", "complexity+quality")},
        "added": sum(added_by.values()),
        "added_by_axis": {axis: added_by[axis] for axis in AXES},
        "kept": len(records) - len(removed),
        "size_after": len(out),
        "asked": len(outcomes),
        "unusable": sum(cats[c] for c in UNUSABLE),
        "unusable_by": {c: cats[c] for c in UNUSABLE},
        "duplicate": cats["duplicate"],
        "rejected": dict(
            sorted(Counter(o.status.split(": ", 1)[1] for o in outcomes if o.category == "rejected").items())
        ),
        "per_axis": per_axis,
        "overlaps": overlaps(flags),
        "reply_status": dict(sorted(cats.items())),
    }
