"""Apply the three refinement operations to one round's flagged samples, recording every change.

Each operation is two teacher calls, as in the Middo reference: a rewrite that yields a new prompt (``simplify`` and
``improve`` reason in steps first, ``diversify`` invents one from the sample and its nearest neighbours), then a fresh
answer to that prompt. Which samples are asked, and how the new samples merge with the data, is
:mod:`middo.refine.merge`'s job (``refine.merge``: the paper's independent axes, or our one-axis-per-sample rule).

Every new sample passes :mod:`middo.refine.validate` first, the prompt before it is sent to be answered (junk costs
no second call) and the whole sample after. Whatever cannot be used (a failed call, an unparseable reply, a rejected
sample, a reply cut at ``max_new_tokens``, a duplicate) leaves the original in place, with the reason in the change
log and a count in the report; the report's ``unusable`` of ``asked`` lets the caller fail a round whose teacher
mostly produced junk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from middo.records import Record, content_id
from middo.refine import merge as merging
from middo.refine import prompts, validate
from middo.refine.merge import OPS, UNUSABLE, Job, Outcome
from middo.teachers.base import Sampling, Teacher, is_cut
from middo.teachers.usage import Price, usage_report

__all__ = ["OPS", "UNUSABLE", "RefineResult", "generate", "plan_jobs", "refine_records"]


@dataclass
class RefineResult:
    records: list[Record]
    changes: list[dict]
    report: dict = field(default_factory=dict)


def _derived(parent: Record, instruction: str, output: str, axis: str, op: str, round_: int) -> Record:
    """A new sample with its lineage. Its input is always empty: every operation turns the parent's prompt (its
    instruction and input together) into one new prompt, so the parent's input would be stale beside it. Its
    ``meta`` is empty too: the parent's labels (a category, a source) describe the parent, not the new text; the
    lineage (``parent_id``, ``axis``, ``op``) leads back to them."""
    return Record(
        id=content_id(instruction, "", output, parent.system, parent.history),
        instruction=instruction,
        input="",
        output=output,
        system=parent.system,
        history=parent.history,
        parent_id=parent.id,
        round=round_,
        axis=axis,
        op=op,
    )


def generate(
    jobs: Sequence[Job], by_id: Mapping[str, Record], teacher: Teacher, sampling: Sampling, round_: int
) -> tuple[list[Outcome], list[tuple[str, str, str | None]]]:
    """Ask the teacher for each job's new sample; returns one outcome per job and every call made as
    ``(operation, step, reply)`` (step ``rewrite`` or ``answer``), whose replies carry their usage.

    Call 1 rewrites (or, for diversify, invents) the prompt from the parent's prompt alone; call 2 answers each new
    prompt that passed validation. The answer is validated against both templates, so neither can be parroted. A
    reply of either call cut at ``max_new_tokens`` is rejected as such, whatever it reads like.
    ``sampling.response_schema`` (structured output) applies to call 1 only: an answer is free text.
    """
    hint_texts = {job: [by_id[h].prompt_text for h in job.hints] for job in jobs}
    first = [prompts.rewrite_prompt(job.op, by_id[job.rid].prompt_text, hint_texts[job]) for job in jobs]
    replies = teacher.complete(first, sampling) if first else []
    calls = [(job.op, "rewrite", reply) for job, reply in zip(jobs, replies)]
    outcomes = []
    for job, reply in zip(jobs, replies):
        if is_cut(reply):  # a prompt (or its analysis) stopped by the cap; its end may be the part that mattered
            outcomes.append(Outcome(job, f"rejected: {validate.CUT_REASON}", reply))
            continue
        parent, template = by_id[job.rid], prompts.REWRITE[job.op]
        instruction, status = prompts.parse_prompt(reply, fallback=job.op == "diversify")
        outcome = Outcome(job, status, reply, instruction)
        if instruction is not None:
            reason = validate.instruction_reason(
                instruction,
                parent,
                template,
                must_differ=job.op != "improve",
                hints=hint_texts[job],
                untagged=status == "fallback",
            )
            if reason:
                outcome.reject(f"rejected: {reason}", reply)
        outcomes.append(outcome)

    need = [o for o in outcomes if o.instruction is not None]
    free_text = replace(sampling, response_schema=None)
    answers = teacher.complete([prompts.answer_prompt(o.instruction) for o in need], free_text) if need else []
    calls += [(o.job.op, "answer", answer) for o, answer in zip(need, answers)]
    for o, answer in zip(need, answers):
        if answer is None:
            o.reject("failed: no answer to the new prompt (call failed)", None)
            continue
        if is_cut(answer):  # an answer without its end would be trained on as if complete
            o.reject(f"rejected: {validate.CUT_REASON}", answer)
            continue
        parent, op = by_id[o.job.rid], o.job.op
        output = prompts.clean(answer, strip_fences=False)
        reason = validate.reject_reason(
            o.instruction, "", output, parent, prompts.REWRITE[op] + "\n" + prompts.ANSWER, must_differ=op != "improve"
        )
        if reason:
            o.reject(f"rejected: {reason}", answer)
        else:
            o.new = _derived(parent, o.instruction, output, o.job.axis, op, round_)
    return outcomes, calls


def plan_jobs(
    records: Sequence[Record],
    flags: Mapping[str, set[str]],
    merge: str,
    precedence: Sequence[str],
    max_added_fraction: float,
    knn_sim: Mapping[str, float],
    neighbors: Mapping[str, Sequence[str]],
) -> tuple[list[Job], list[dict], dict]:
    """The requests a round will make under the ``merge`` rule: its jobs, the samples left out (precedence's cap)
    and the rule's extra report fields; shared by :func:`refine_records` and the plan, so both ask the same.

    Raises:
        ValueError: ``merge`` is not a known rule.
    """
    if merge == "reference":
        return merging.reference_jobs(records, flags, neighbors), [], {}
    if merge == "precedence":
        return merging.precedence_jobs(records, flags, neighbors, precedence, max_added_fraction, knn_sim)
    raise ValueError(f"refine_records: merge must be 'reference' or 'precedence', got {merge!r}")


def refine_records(
    records: Sequence[Record],
    flags: Mapping[str, set[str]],
    teacher: Teacher,
    sampling: Sampling,
    round_: int,
    *,
    merge: str,
    precedence: Sequence[str] = ("quality", "complexity", "diversity"),
    max_added_fraction: float = 0.1,
    knn_sim: Mapping[str, float] | None = None,
    neighbors: Mapping[str, Sequence[str]] | None = None,
    price: Price | None = None,
) -> RefineResult:
    """Refine ``records`` given per-axis sets of flagged ids; returns the new dataset, changes and report.

    Args:
        records: the current dataset.
        flags: axis -> ids flagged on it (ids not in ``records`` are ignored).
        teacher: answers the rewrite and answer prompts.
        sampling: decoding settings of every call; its ``response_schema`` (structured output, see
            :func:`middo.refine.prompts.rewrite_schema`) is asked of the rewrite calls only.
        round_: written into each new sample's lineage.
        merge: ``reference`` or ``precedence`` (see :mod:`middo.refine.merge`).
        precedence: ``precedence`` merge only: the axis that handles a sample flagged on several.
        max_added_fraction: ``precedence`` merge only: cap on new diversify samples, as a fraction of the size.
        knn_sim: ``precedence`` merge only: mean similarity to the neighbours, so the cap keeps the sparsest.
        neighbors: id -> ids of its nearest neighbours, most similar first; their prompts are diversify's hints.
        price: dollars per million tokens, for the cost in the report's ``teacher_usage`` (``None``: tokens only).

    Raises:
        ValueError: ``merge`` is not a known rule.
    """
    by_id = {r.id: r for r in records}
    flags = {axis: set(ids) & by_id.keys() for axis, ids in flags.items()}
    jobs, left_out, extra = plan_jobs(
        records, flags, merge, precedence, max_added_fraction, knn_sim or {}, neighbors or {}
    )
    outcomes, calls = generate(jobs, by_id, teacher, sampling, round_)
    out, removed = merging.assemble(records, outcomes)
    changes = [merging.change(o, by_id[o.job.rid], o.job.rid in removed) for o in outcomes] + left_out
    report = {"merge": merge, **merging.report(records, out, outcomes, flags, removed), **extra}
    report["diversify_without_hints"] = sum(o.job.op == "diversify" and not o.job.hints for o in outcomes)
    report["teacher_calls"] = len(calls)
    report["teacher_usage"] = usage_report(calls, round_, price)
    return RefineResult(out, changes, report)
