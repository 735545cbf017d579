"""One round of refinement: read the diagnosis, call the teacher, write the next dataset and the change log."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from middo.config import TeacherConfig
from middo.dataio import write_jsonl
from middo.dataio.atomic import atomic_write_text
from middo.dataio.writers import read_records
from middo.refine.engine import refine_records
from middo.teachers import make_teacher
from middo.teachers.base import Sampling
from middo.teachers.cache import CachedTeacher


def build_teacher(cfg: TeacherConfig, device: str = "auto", dtype: str = "auto"):
    """The configured backend behind the content-addressed cache."""
    if cfg.backend == "openai":
        inner = make_teacher(
            "openai",
            base_url=cfg.base_url,
            model=cfg.model,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
        )
    elif cfg.backend == "transformers":
        inner = make_teacher("transformers", model_path=cfg.model, device=device, dtype=dtype)
    else:
        inner = make_teacher(cfg.backend, model_path=cfg.model)
    return CachedTeacher(inner, cfg.cache_dir)


def _markdown(report: dict, changes: list[dict], n_examples: int = 3) -> str:
    lines = [
        f"# Refinement, round {report['round']}",
        "",
        f"Size {report['size_before']} -> {report['size_after']}: kept {report['kept']}, replaced "
        f"{report['replaced']}, added {report['added']}, dropped duplicates {report['dropped_duplicates']}.",
        "",
        "| axis | flagged | handled | changed | kept (unparseable reply) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for axis, c in report["per_axis"].items():
        lines.append(f"| {axis} | {c['flagged']} | {c['handled']} | {c['changed']} | {c['kept_unparseable']} |")
    lines += ["", f"Overlaps (handled once, by precedence): {report['overlaps'] or 'none'}", ""]
    for op in ("simplify", "diversify", "improve"):
        examples = [c for c in changes if c["op"] == op and "after" in c][:n_examples]
        for c in examples:
            b, a = c["before"], c["after"]
            lines += [
                f"## {op}: {c['parent_id']} -> {c['id']}",
                "",
                "**Before**",
                "",
                f"> {b['instruction']}",
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
    seed: int = 42,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """Write ``out_dir/train.jsonl``, ``metrics_dir/{changes.jsonl, refine_report.md}`` and ``summary_path``."""
    records = read_records(data_path)
    scores = pl.read_parquet(Path(diagnosis_dir) / "scores.parquet")
    flags = {
        axis: set(scores.filter(pl.col(f"flag_{axis}"))["id"].to_list())
        for axis in ("complexity", "diversity", "quality")
    }
    knn = dict(zip(scores["id"].to_list(), scores["knn_sim"].to_list()))
    teacher = build_teacher(teacher_cfg, device, dtype)
    sampling = Sampling(max_new_tokens=teacher_cfg.max_new_tokens, temperature=teacher_cfg.temperature, seed=seed)
    result = refine_records(records, flags, teacher, sampling, round_, precedence, max_added_fraction, knn)
    report = {"round": round_, **result.report, "cache": {"hits": teacher.hits, "misses": teacher.misses}}
    write_jsonl(result.records, Path(out_dir) / "train.jsonl")
    metrics_dir = Path(metrics_dir)
    atomic_write_text(
        metrics_dir / "changes.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in result.changes)
    )
    atomic_write_text(summary_path, json.dumps({"refine": report}, indent=2) + "\n")
    atomic_write_text(metrics_dir / "refine_report.md", _markdown(report, result.changes))
    return report
