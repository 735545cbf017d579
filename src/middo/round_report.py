"""One page per round: what the diagnosis flagged and why, what the teacher did, and what the model scored.

After a round the facts a person wants are spread over five files (diagnose.json, the histograms, refine.json,
changes.jsonl, eval.json); ``reports/rounds/round_R.md`` puts them on one Markdown page. Its images are copied next to
it (``round_R/*.png``) because the diagnosis folder is DVC-cached and git-ignored: the page must read the same on
GitHub, in a fresh clone before ``dvc pull``, and offline.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_bytes, atomic_write_text

AXES = ("complexity", "diversity", "quality")
OPS = {"complexity": "simplify", "diversity": "diversify", "quality": "improve"}
FIGURES = (
    ("hist_loss_base.png", "Response loss under the base model"),
    ("hist_loss_current.png", "Response loss under the current model"),
    ("hist_knn_sim.png", "Similarity to the k nearest neighbours"),
    ("hist_quality.png", "Judged quality"),
    ("embedding_map.png", "Prompt embeddings (PCA): sparse flags and teacher-made samples"),
)
EXAMPLE_CHARS = 300


def _json(path: Path, key: str | None = None) -> dict:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get(key, {}) if key else data


def _clip(text: str, n: int = EXAMPLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _quote(record: Mapping[str, Any]) -> list[str]:
    prompt = record["instruction"] + (f"\n{record['input']}" if record.get("input") else "")
    return [f"> **prompt:** {_clip(prompt)}", ">", f"> **response:** {_clip(record['output'])}"]


def _examples(changes: list[dict], n: int) -> list[str]:
    """Up to ``n`` before/after pairs per operation, teacher-written ones first, then kept originals with why."""
    lines: list[str] = []
    for axis in AXES:
        op = OPS[axis]
        mine = [c for c in changes if c.get("op") == op]
        if not mine:
            continue
        lines += ["", f"### {op} ({axis}): {len(mine)} asked", ""]
        shown = sorted(mine, key=lambda c: "after" not in c)[:n]
        for c in shown:
            lines += [f"**{c['parent_id']}** → {c['result']} ({c['status']})", "", "Before:", *_quote(c["before"]), ""]
            if "after" in c:
                lines += ["After:", *_quote(c["after"]), ""]
            elif c.get("reply"):
                lines += [f"Teacher's reply (not used): `{_clip(c['reply'], 160)}`", ""]
    return lines


def usage_lines(usage: Mapping, axis_of: Mapping[str, str] | None = None) -> list[str]:
    """A Markdown table of a round's teacher usage (:func:`middo.teachers.usage.usage_report`: one row per operation
    and step, then the total), for this page and refine's own report; replies another round paid for are counted
    under ``cached`` and cost nothing here."""
    axis_of = axis_of or {}
    priced = usage.get("price") is not None
    head = "| operation | step | replies | cached (free) | failed | prompt tokens | completion tokens |"
    lines = [head + (" cost $ |" if priced else ""), "|" + " --- |" * (7 + priced)]
    rows = [
        (f"{op} ({axis_of[op]})" if op in axis_of else op, step, b)
        for op, steps in usage.get("operations", {}).items()
        for step, b in steps.items()
        if step != "total"
    ]
    for name, step, b in [*rows, ("**total**", "", usage["total"])]:
        lines.append(
            f"| {name} | {step} | {b['requests']} | {b['cached']} | {b['failed']} | {b['prompt_tokens']} | "
            f"{b['completion_tokens']} |" + (f" {b['cost']:.4f} |" if priced else "")
        )
    total = usage["total"]
    notes = []
    if priced:
        p = usage["price"]
        notes.append(
            f"Priced at ${p['input']}/${p['output']} per million prompt/completion tokens; the cached replies would "
            f"have cost ${total['cached_cost']:.4f}."
        )
    if total["unknown_usage"]:
        notes.append(f"{total['unknown_usage']} cached replies predate usage records: counted as 0 tokens.")
    return lines + ([""] + notes if notes else [])


def _accuracy(ev: dict, noise: dict | None) -> list[str]:
    if not ev:
        return ["No evaluation for this round yet."]
    iv = ev.get("interval", {})
    lines = ["| suite | accuracy | 95% interval | n |", "| --- | --- | --- | --- |"]
    for suite, acc in ev.get("accuracy", {}).items():
        b = iv.get(suite)
        lines.append(
            f"| {suite} | {acc:.3f} | " + (f"{b['low']:.2f}–{b['high']:.2f}" if b else "–") + f" | {ev['n'][suite]} |"
        )
    b = iv.get("average")
    lines.append(
        f"| **average** | {ev['average']:.3f} | " + (f"{b['low']:.2f}–{b['high']:.2f}" if b else "–") + " | |"
    )
    if noise and "average" in noise:
        a = noise["average"]
        lines += [
            "",
            f"Against round {noise['from']}: average {a['delta']:+.3f} (95% {a['low']:+.2f} to {a['high']:+.2f}), "
            f"**{a['verdict']}**; per suite: "
            + ", ".join(f"{s} {v['verdict']}" for s, v in noise["suites"].items())
            + ".",
        ]
    return lines


def round_page(metrics_dir: Path, round_: int, parent: int | None, noise: dict | None, images: Path, n: int) -> str:
    """The Markdown of one round's page; ``images`` is the folder (relative to the page) its PNGs were copied to."""
    d = metrics_dir / f"round_{round_}"
    ev = _json(d / "eval.json")
    lines = [f"# Round {round_}", ""]
    if parent is None:
        imp = _json(d / "import.json", "import")
        lines += [
            f"The seed: {imp.get('kept', '?')} of {imp.get('total', '?')} records kept "
            f"({imp.get('rejected', 0)} rejected, {imp.get('over_limit', 0)} over the limit).",
        ]
        if imp.get("rejects_by_reason"):
            lines += ["", *(f"- {k}: {v}" for k, v in imp["rejects_by_reason"].items())]
    else:
        # the whole records live in the stages' folders; runs older than that kept them in the metrics files
        diag = _json(d / "diagnosis" / "summary.json") or _json(d / "diagnose.json", "diagnose")
        ref = _json(d / "refine" / "summary.json") or _json(d / "refine.json", "refine")
        lines += [
            f"Refines round {parent}: {ref.get('size_before', '?')} → {ref.get('size_after', '?')} samples "
            f"({ref.get('removed', 0)} replaced by rewrites, {ref.get('added', 0)} new); selection "
            f"{ref.get('selection', 'model')}, merge {ref.get('merge', '?')}.",
            "",
            "## Diagnosis",
            "",
            "| signal | mean | std | m | threshold | flags when | flagged |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        flagged = diag.get("flagged", {})
        axis_of = {
            "loss_base": "complexity",
            "loss_current": "complexity",
            "knn_sim": "diversity",
            "quality": "quality",
        }
        for name, t in diag.get("thresholds", {}).items():
            lines.append(
                f"| {name} | {t['mean']:.3f} | {t['std']:.3f} | {t['m']} | {t['value']:.3f} | {t['direction']} | "
                f"{flagged.get(axis_of.get(name, ''), '–')} ({axis_of.get(name, '')}) |"
            )
        lines += [""]
        lines += [
            f"![{title}]({images.as_posix()}/{name})" for name, title in FIGURES if (d / "diagnosis" / name).is_file()
        ]
        per_axis = ref.get("per_axis", {})
        lines += [
            "",
            "## Refinement",
            "",
            "| axis | flagged | asked | added | unusable | duplicate |",
            "| --- | --- | --- | --- | --- | --- |",
            *(
                f"| {a} | {c['flagged']} | {c['asked']} | {c['added']} | {c['unusable']} | {c['duplicate']} |"
                for a, c in per_axis.items()
            ),
            "",
            "Teacher replies: "
            + (", ".join(f"{k} {v}" for k, v in ref.get("reply_status", {}).items()) or "none")
            + (
                "; rejected by validation: " + ", ".join(f"{k} {v}" for k, v in ref["rejected"].items())
                if ref.get("rejected")
                else ""
            )
            + ".",
        ]
        if ref.get("teacher_usage"):
            lines += ["", "### Teacher usage", "", *usage_lines(ref["teacher_usage"], {v: k for k, v in OPS.items()})]
        changes_path = d / "refine" / "changes.jsonl"
        if changes_path.is_file():
            changes = [json.loads(x) for x in changes_path.read_text(encoding="utf-8").splitlines() if x.strip()]
            lines += ["", f"## Examples (up to {n} per operation)", *_examples(changes, n)]
    lines += ["", "## Accuracy", "", *_accuracy(ev, noise), ""]
    return "\n".join(lines)


def write_round_reports(
    metrics_dir: str | Path, rounds: Mapping[str | int, int], noise: list[dict], out_dir: str | Path, n: int = 3
) -> list[Path]:
    """Write ``out_dir/round_R.md`` for round 0 and every round in ``rounds``, images in ``out_dir/round_R/``."""
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    by_pair = {(p["from"], p["to"]): p for p in noise if "skipped" not in p}
    parents: dict[int, int | None] = {0: None, **{int(r): int(p) for r, p in rounds.items()}}
    written = []
    for r, parent in sorted(parents.items()):
        images = out_dir / f"round_{r}"
        diag_dir = metrics_dir / f"round_{r}" / "diagnosis"
        for name, _ in FIGURES:
            if (diag_dir / name).is_file():
                images.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(images / name, (diag_dir / name).read_bytes())
        if images.is_dir() and not any(images.iterdir()):
            shutil.rmtree(images)
        page = round_page(metrics_dir, r, parent, by_pair.get((parent, r)), Path(f"round_{r}"), n)
        atomic_write_text(out_dir / f"round_{r}.md", page)
        written.append(out_dir / f"round_{r}.md")
    return written
