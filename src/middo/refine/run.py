"""One round of refinement: read the diagnosis, call the teacher, write the next dataset and the change log.

A round whose teacher mostly failed or wrote junk fails before anything is written, so DVC never records a broken
round as done and the next stage never trains on it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from middo.config import TeacherConfig
from middo.dataio import write_jsonl
from middo.dataio.atomic import atomic_write_text
from middo.dataio.llamafactory import round_dataset_name, write_dataset_info
from middo.dataio.writers import read_records
from middo.errors import MiddoError
from middo.provenance import environment
from middo.refine.engine import UNUSABLE, RefineResult, refine_records
from middo.refine.prompts import TEMPLATE_VERSION, rewrite_schema
from middo.refine.selection import select
from middo.refine.validate import CUT_REASON
from middo.teachers import make_teacher
from middo.teachers.base import Sampling
from middo.teachers.cache import CachedTeacher, local_identity, request_identity, server_identity

log = logging.getLogger(__name__)


def teacher_kwargs(cfg: TeacherConfig, device: str, dtype: str) -> dict:
    """The constructor arguments of the configured backend (see :func:`middo.teachers.make_teacher`)."""
    if cfg.backend == "openai":
        return {
            "base_url": cfg.base_url,
            "model": cfg.model,
            "api_key_env": cfg.api_key_env,
            "concurrency": cfg.concurrency,
            "timeout": cfg.timeout,
            "max_retries": cfg.max_retries,
            "system_prompt": cfg.system_prompt,
            "extra_body": cfg.extra_body,
            "token_limit_param": cfg.token_limit_param,
        }
    if cfg.extra_body:
        log.warning("refine.teacher.extra_body is for the openai backend; the %s backend ignores it", cfg.backend)
    if cfg.backend == "transformers":
        return {"model_path": cfg.model, "device": device, "dtype": dtype, "system_prompt": cfg.system_prompt}
    engine = cfg.vllm
    return {
        "model_path": cfg.model,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "system_prompt": cfg.system_prompt,
    }


def build_teacher(cfg: TeacherConfig, device: str, dtype: str, round_: int = 0) -> CachedTeacher:
    """The configured backend behind the content-addressed cache, keyed on what answers (see ``cache``): the
    model, and what every request carries besides the prompt (system prompt, openai ``extra_body``); a sampled
    reply also on ``round_``, so no round is handed another round's draw."""
    inner = make_teacher(cfg.backend, **teacher_kwargs(cfg, device, dtype))
    if cfg.backend == "openai":
        identity = server_identity(cfg.model, cfg.base_url, cfg.revision)
        identity.update(request_identity(cfg.system_prompt, cfg.extra_body))
    else:
        identity = local_identity(cfg.backend, cfg.model, cfg.cache_dir, cfg.revision)
        identity.update(request_identity(cfg.system_prompt))
        if cfg.backend == "transformers":  # bfloat16 and float32 greedy replies differ: the dtype answers too
            from middo.device import resolve_device, resolve_dtype

            where = resolve_device(device)  # so do a CPU's and a GPU's kernels
            identity.update(device=where.type, dtype=str(resolve_dtype(dtype, where)).removeprefix("torch."))
    return CachedTeacher(inner, cfg.cache_dir, identity, TEMPLATE_VERSION, round_=round_)


def check_unusable(result: RefineResult, round_: int, max_failed_fraction: float) -> None:
    """Fail a round in which more than ``max_failed_fraction`` of the asked samples got no usable reply.

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
        "Failed calls are not cached, so a rerun asks the teacher again once it is back; unparseable and rejected "
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
    """Write ``out_dir/{train.jsonl, dataset_info.json}``, ``metrics_dir/{changes.jsonl, refine_report.md}`` and
    ``summary_path``.

    Args:
        merge: ``reference`` (the paper's independent axes) or ``precedence`` (one axis per sample, capped growth);
            ``precedence`` and ``max_added_fraction`` apply to the latter only.
        selection: ``model`` (the diagnosis's flags) or ``random`` (the control: as many per axis, drawn with
            ``seed``); the report keeps the diagnosis's counts under ``diagnosis_flagged``.

    Raises:
        MiddoError: more than ``max_failed_fraction`` of the teacher's replies were unusable; nothing is written.
    """
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
    neighbors = read_neighbors(scores, scores_path)
    teacher = build_teacher(teacher_cfg, device, dtype, round_)
    sampling = Sampling(
        max_new_tokens=teacher_cfg.max_new_tokens,
        temperature=teacher_cfg.temperature,
        top_p=teacher_cfg.top_p,
        seed=seed,
        response_schema=rewrite_schema() if teacher_cfg.structured_output else None,  # the engine: rewrites only
    )
    result = refine_records(
        records,
        flags,
        teacher,
        sampling,
        round_,
        merge=merge,
        precedence=precedence,
        max_added_fraction=max_added_fraction,
        knn_sim=knn,
        neighbors=neighbors,
    )
    check_unusable(result, round_, max_failed_fraction)
    report = {
        "round": round_,
        "selection": selection,
        "diagnosis_flagged": diagnosis_flagged,
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
    atomic_write_text(summary_path, json.dumps({"refine": report, "env": env}, indent=2) + "\n")
    atomic_write_text(metrics_dir / "refine_report.md", _markdown(report, result.changes))
    return {**report, "cache": {"hits": teacher.hits, "misses": teacher.misses}}
