"""One round of refinement: read the diagnosis, call the teacher, write the next dataset and the change log.

A round whose teacher mostly failed or wrote junk fails before anything is written, so DVC never records a broken
round as done and the next stage never trains on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from middo.config import TeacherConfig
from middo.dataio import write_jsonl
from middo.dataio.atomic import atomic_write_text
from middo.dataio.llamafactory import round_dataset_name, write_dataset_info
from middo.dataio.writers import read_records
from middo.errors import MiddoError
from middo.provenance import environment, write_metrics
from middo.refine.engine import OPS, UNUSABLE, RefineResult, refine_records
from middo.refine.prompts import TEMPLATE_VERSION, rewrite_schema
from middo.refine.selection import select
from middo.refine.validate import CUT_REASON
from middo.round_report import usage_lines
from middo.teachers import backend_class, make_teacher
from middo.teachers.base import Sampling
from middo.teachers.cache import CachedTeacher
from middo.teachers.usage import Budget, Price

log = logging.getLogger(__name__)


def teacher_kwargs(cfg: TeacherConfig, device: str, dtype: str) -> dict:
    """The constructor arguments of the configured backend, as the backend reads them from ``cfg``."""
    return backend_class(cfg.backend).config_kwargs(cfg, device, dtype)


def build_teacher(
    cfg: TeacherConfig, device: str, dtype: str, round_: int = 0, budget: Budget | None = None
) -> CachedTeacher:
    """The configured backend behind the content-addressed cache, keyed on what answers (see ``cache``): the
    model, and what every request carries besides the prompt (system prompt, openai ``extra_body``); a sampled
    reply also on ``round_``, so no round is handed another round's draw. ``mode: batch`` keeps the keys and sends
    the misses through the Batch API (:mod:`middo.teachers.openai_batch`). ``budget`` is charged per reply sent."""
    inner = make_teacher(cfg.backend, **teacher_kwargs(cfg, device, dtype))
    identity = teacher_identity(cfg, device, dtype)
    if cfg.mode == "batch":  # openai only (config): the same keys and cache, the misses sent as Batch API files
        from middo.teachers.openai_batch import BatchTeacher

        return BatchTeacher(inner, cfg.cache_dir, identity, TEMPLATE_VERSION, round_=round_, budget=budget)
    return CachedTeacher(inner, cfg.cache_dir, identity, TEMPLATE_VERSION, round_=round_, budget=budget)


def teacher_identity(cfg: TeacherConfig, device: str, dtype: str) -> dict[str, str]:
    """What the cache keys the configured teacher's replies on (see :func:`build_teacher`), as the backend says;
    builds no model."""
    return backend_class(cfg.backend).cache_identity(cfg, device, dtype)


def teacher_price(cfg: TeacherConfig) -> Price | None:
    """``refine.teacher.price`` as a :class:`Price` (``None`` when unset: tokens only), halved in batch mode (the
    Batch API's price)."""
    if not (cfg.price.input or cfg.price.output):
        return None
    price = Price(cfg.price.input, cfg.price.output)
    return price.scaled(0.5) if cfg.mode == "batch" else price


def teacher_sampling(cfg: TeacherConfig, seed: int) -> Sampling:
    """The decoding settings of every teacher call of a round."""
    return Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=seed,
        response_schema=rewrite_schema() if cfg.structured_output else None,  # the engine: rewrites only
    )


@dataclass
class RoundInputs:
    """What a round refines: the data, the per-axis flags after selection, and the diagnosis's neighbourhoods."""

    records: list
    flags: dict[str, set[str]]
    diagnosis_flagged: dict[str, int]
    knn: dict[str, float]
    neighbors: dict[str, list[str]]


def read_round(
    data_path: str | Path, diagnosis_dir: str | Path, selection: str, seed: int, round_: int
) -> RoundInputs:
    """Read a round's data and diagnosis and apply ``selection`` (see :func:`refine_round`)."""
    records = read_records(data_path)
    scores_path = Path(diagnosis_dir) / "scores.parquet"
    scores = pl.read_parquet(scores_path)
    flags = {
        axis: set(scores.filter(pl.col(f"flag_{axis}"))["id"].to_list())
        for axis in ("complexity", "diversity", "quality")
    }
    diagnosis_flagged = {axis: len(ids) for axis, ids in flags.items()}
    flags = select(flags, [r.id for r in records], selection, seed, round_)
    knn = dict(zip(scores["id"].to_list(), scores["knn_sim"].to_list()))
    return RoundInputs(records, flags, diagnosis_flagged, knn, read_neighbors(scores, scores_path))


def plan_for(
    inputs: RoundInputs, cfg: TeacherConfig, seed: int, device: str, dtype: str, round_: int, **merge_kwargs
) -> dict:
    """The round's plan (:func:`middo.refine.plan.plan_round`) from the cache alone: no model is built, nothing sent.

    A local teacher counts prompt tokens with its own tokenizer, a served one with ``refine.teacher.tokenizer``.
    """
    from middo.refine.plan import TokenCounter, offline_cache, plan_round

    identity = teacher_identity(cfg, device, dtype)
    cache = offline_cache(cfg.cache_dir, identity, TEMPLATE_VERSION, round_)
    own = not backend_class(cfg.backend).served and Path(cfg.model).is_dir()
    counter = TokenCounter(cfg.model if own else cfg.tokenizer, cfg.system_prompt)
    plan = plan_round(
        inputs.records,
        inputs.flags,
        cache,
        teacher_sampling(cfg, seed),
        round_,
        counter,
        teacher_price(cfg),
        knn_sim=inputs.knn,
        neighbors=inputs.neighbors,
        **merge_kwargs,
    )
    return {**plan, "mode": cfg.mode}


def check_unusable(
    result: RefineResult, round_: int, max_failed_fraction: float, batch_folder: Path | None = None
) -> None:
    """Fail a round in which more than ``max_failed_fraction`` of the asked samples got no usable reply.

    ``batch_folder``: where a Batch API teacher remembers this round's failed requests (the hint says so).

    Raises:
        MiddoError: naming the counts by kind and showing the first unusable reply with its reason.
    """
    rep = result.report
    asked, unusable = rep["asked"], rep["unusable"]
    if asked == 0 or unusable / asked <= max_failed_fraction:
        return
    reasons = ", ".join(f"{reason}: {n}" for reason, n in rep["rejected"].items())
    kinds = ", ".join(
        f"{n} {kind}" + (f" ({reasons})" if kind == "rejected" else "") for kind, n in rep["unusable_by"].items() if n
    )
    first = next(c for c in result.changes if c["status"].split(":")[0] in UNUSABLE)
    reply = first.get("reply")
    shown = "no reply" if reply is None else repr(reply[:200] + ("..." if len(reply) > 200 else ""))
    raise MiddoError(
        f"round {round_}: {unusable} of {asked} teacher replies unusable ({unusable / asked:.0%} > "
        f"refine.max_failed_fraction {max_failed_fraction:.0%}): {kinds}. "
        f"First ({first['op']} of {first['parent_id']}): {first['status']} -- {shown}. Nothing was written. "
        + (
            "Failed calls are not cached, so a rerun asks the teacher again once it is back; "
            if batch_folder is None
            else f"Failed batch requests are remembered for this round: delete {batch_folder} to send them again; "
        )
        + "unparseable and rejected "
        "replies are cached, so change the teacher (refine.teacher) or raise refine.max_failed_fraction."
        + (
            " Cut replies: raise refine.teacher.max_new_tokens (a new cap asks afresh)."
            if CUT_REASON in rep["rejected"]
            else ""
        )
    )


def _markdown(report: dict, changes: list[dict], n_examples: int = 3) -> str:
    lines = [
        f"# Refinement, round {report['round']}",
        "",
        f"Selection: {report['selection']}"
        + (
            f" (the control: per axis as many as the diagnosis flagged, {report['diagnosis_flagged']}, at random)"
            if report["selection"] == "random"
            else " (the diagnosis's flags)"
        )
        + f". Merge rule: {report['merge']}. Size {report['size_before']} -> {report['size_after']}: "
        f"{report['removed']} originals removed (replaced by their rewrites), {report['kept']} kept, "
        f"{report['added']} new samples added.",
        "",
        f"Unusable teacher replies: {report['unusable']} of {report['asked']} "
        f"({', '.join(f'{n} {kind}' for kind, n in report['unusable_by'].items())}); "
        f"new samples already in the data (not added): {report['duplicate']}. "
        "Where a rewrite is unusable or a duplicate, its original stays.",
        "",
        "| axis | flagged | asked | added | unusable | duplicate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for axis, c in report["per_axis"].items():
        lines.append(f"| {axis} | {c['flagged']} | {c['asked']} | {c['added']} | {c['unusable']} | {c['duplicate']} |")
    lines += [
        "",
        "Rejected by validation: " + (", ".join(f"{r} {n}" for r, n in report["rejected"].items()) or "none"),
    ]
    handled = "each axis asked separately" if report["merge"] == "reference" else "handled once, by precedence"
    lines += ["", f"Flagged on several axes ({handled}): {report['overlaps'] or 'none'}", ""]
    axis_of = {op: axis for axis, op in OPS.items()}
    lines += ["## Teacher usage", "", *usage_lines(report["teacher_usage"], axis_of), ""]
    for op in ("simplify", "diversify", "improve"):
        examples = [c for c in changes if c["op"] == op and "after" in c][:n_examples]
        for c in examples:
            b, a = c["before"], c["after"]
            lines += [
                f"## {op}: {c['parent_id']} -> {c['id']} ({c['result']})",
                "",
                "**Before**",
                "",
                f"> {b['instruction']}",
                *([">", f"> {b['input'][:400]}"] if b.get("input") else []),  # a rewrite folds the input in
                ">",
                f"> {b['output'][:400]}",
                "",
                "**After**",
                "",
                f"> {a['instruction']}",
                ">",
                f"> {a['output'][:400]}",
                "",
            ]
    return "\n".join(lines) + "\n"


def read_neighbors(scores: pl.DataFrame, path: Path) -> dict[str, list[str]]:
    """id -> its nearest neighbours' ids (most similar first), the hint prompts of diversify.

    A diagnosis written before the ``neighbors`` column existed still refines, without hints, and says so.
    """
    if "neighbors" not in scores.columns:
        log.warning("%s has no 'neighbors' column (an older diagnosis): diversify runs without hint prompts", path)
        return {}
    return {rid: list(n or ()) for rid, n in zip(scores["id"].to_list(), scores["neighbors"].to_list())}


# the report's numbers that get a column in `dvc exp show`; the rest (settings, per-axis and per-reason breakdowns
# whose keys vary) stays in the refine folder's summary.json
REFINE_METRICS = (
    "size_before", "removed", "added", "kept", "size_after", "asked", "unusable", "duplicate", "teacher_calls"
)  # fmt: skip


def refine_metrics(report: dict) -> dict:
    """Sizes, teacher replies asked and unusable, what each axis added, and the teacher's tokens and cost (per
    operation and step; cost only when priced): the numbers compared across runs."""
    usage = report["teacher_usage"]
    keep = ("requests", "cached", "prompt_tokens", "completion_tokens", "cost")
    teacher = {
        "total": {k: usage["total"][k] for k in keep if k in usage["total"]},
        **{
            f"{op}_{step}": {k: bucket[k] for k in keep if k in bucket}
            for op, steps in usage["operations"].items()
            for step, bucket in steps.items()
            if step != "total"
        },
    }
    return {**{k: report[k] for k in REFINE_METRICS}, "added_by_axis": report["added_by_axis"], "teacher": teacher}


def refine_round(
    data_path: str | Path,
    diagnosis_dir: str | Path,
    out_dir: str | Path,
    metrics_dir: str | Path,
    summary_path: str | Path,
    round_: int,
    precedence,
    max_added_fraction: float,
    teacher_cfg: TeacherConfig,
    seed: int,
    device: str,
    dtype: str,
    *,
    max_failed_fraction: float,
    merge: str,
    selection: str,
) -> dict:
    """Write ``out_dir/{train.jsonl, dataset_info.json}``, ``metrics_dir/{changes.jsonl, refine_report.md,
    summary.json}`` (the whole report) and ``summary_path`` (its numbers, :func:`refine_metrics`, with an env record).

    Args:
        merge: ``reference`` (the paper's independent axes) or ``precedence`` (one axis per sample, capped growth);
            ``precedence`` and ``max_added_fraction`` apply to the latter only.
        selection: ``model`` (the diagnosis's flags) or ``random`` (the control: as many per axis, drawn with
            ``seed``); the report keeps the diagnosis's counts under ``diagnosis_flagged``.

    Raises:
        MiddoError: more than ``max_failed_fraction`` of the teacher's replies were unusable; nothing is written.
        BudgetExceeded: the plan's estimate is over ``refine.teacher.max_cost`` (nothing sent), or the cost reached
            it while running (the replies so far are cached); nothing is written.
    """
    inputs = read_round(data_path, diagnosis_dir, selection, seed, round_)
    merge_kwargs = {"merge": merge, "precedence": precedence, "max_added_fraction": max_added_fraction}
    price = teacher_price(teacher_cfg)
    budget = None
    if teacher_cfg.max_cost is not None:  # price is set (config): refuse up front, then stop when it is reached
        from middo.refine.plan import check_budget

        plan = plan_for(inputs, teacher_cfg, seed, device, dtype, round_, **merge_kwargs)
        budget = check_budget(plan, price, teacher_cfg.max_cost)
    teacher = build_teacher(teacher_cfg, device, dtype, round_, budget)
    result = refine_records(
        inputs.records,
        inputs.flags,
        teacher,
        teacher_sampling(teacher_cfg, seed),
        round_,
        knn_sim=inputs.knn,
        neighbors=inputs.neighbors,
        price=price,
        **merge_kwargs,
    )
    check_unusable(result, round_, max_failed_fraction, getattr(teacher, "folder", None))  # folder: batch mode
    report = {
        "round": round_,
        "selection": selection,
        "diagnosis_flagged": inputs.diagnosis_flagged,
        **result.report,
    }  # cache hits are not in it: a warm and a clean run write the same
    ident = teacher.identity
    env = environment(ident.get("device", "n/a"), ident.get("dtype", "n/a"))
    write_jsonl(result.records, Path(out_dir) / "train.jsonl")
    write_dataset_info(out_dir, round_dataset_name(round_), "train.jsonl")  # `llamafactory-cli train` reads it as is
    metrics_dir = Path(metrics_dir)
    atomic_write_text(
        metrics_dir / "changes.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in result.changes)
    )
    atomic_write_text(metrics_dir / "summary.json", json.dumps(report, indent=2) + "\n")
    write_metrics(summary_path, {"refine": refine_metrics(report)}, env)
    atomic_write_text(metrics_dir / "refine_report.md", _markdown(report, result.changes))
    return {**report, "cache": {"hits": teacher.hits, "misses": teacher.misses}}
