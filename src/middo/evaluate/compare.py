"""Is evaluation B better than evaluation A, or is the difference noise? A paired, item-by-item comparison.

Every round answers the same seeded items (:func:`middo.evaluate.items.select_items`), so two rounds' details pair up
on ``(suite, id)``. Per suite and for the average over suites this gives both accuracies on the paired items, their
difference, a paired-bootstrap 95% interval of it and McNemar's exact p-value (:mod:`middo.evaluate.stats`
measures); the verdict comes from the interval alone: "outside noise" when it excludes 0, else "within noise".

A side is an ``eval_details.jsonl`` path, a round folder holding one (``metrics/round_1``), or ``REV:PATH`` with a
git revision or DVC experiment name, read through ``dvc.api`` (the details are a DVC-cached output).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from middo.errors import MiddoError
from middo.evaluate.stats import bootstrap_delta, mcnemar_exact

DETAILS = "eval_details.jsonl"  # the name evaluate_model gives the details beside metrics/round_R/eval.json


def parse_details(text: str, source: str) -> list[dict[str, Any]]:
    """Per-item results (``suite``, ``id``, ``correct``) from the text of an ``eval_details.jsonl``.

    Raises:
        MiddoError: a line that is not a JSON object with a string ``suite``, an ``id`` and a boolean ``correct``
            (every bad line is named, with ``source`` and its line number), or no lines at all.
    """
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{source}:{lineno}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("suite"), str) or row.get("id") is None:
            problems.append(f"{source}:{lineno}: expected an object with 'suite' (string) and 'id'")
        elif not isinstance(row.get("correct"), bool):
            problems.append(f"{source}:{lineno}: 'correct' must be true or false, got {row.get('correct')!r}")
        else:
            rows.append(row)
    if problems:
        raise MiddoError("\n".join(problems[:20] + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else [])))
    if not rows:
        raise MiddoError(f"{source}: no per-item results")
    return rows


def details_file(spec: str | Path) -> Path:
    """A local side: the file itself, or ``<folder>/eval_details.jsonl`` for a round folder (or a name not ending
    in ``.jsonl``, so that a missing round is reported by the file it lacks)."""
    path = Path(spec)
    return path / DETAILS if path.is_dir() or (not path.exists() and path.suffix != ".jsonl") else path


def load_details(spec: str, repo: str | Path = ".") -> list[dict[str, Any]]:
    """The per-item results a side names: a path, a round folder, or ``REV:PATH`` (git revision or DVC experiment).

    A spec that exists on disk is a path even if it holds a colon.

    Raises:
        MiddoError: the file is missing, unreadable at that revision, or malformed (:func:`parse_details`).
    """
    local = Path(repo) / spec
    rev, sep, path = spec.partition(":")
    if not sep or local.exists() or not rev or not path:
        file = details_file(local)
        if not file.is_file():
            raise MiddoError(f"{file}: no such evaluation details file (run `dvc repro` or `dvc pull` first)")
        return parse_details(file.read_text(encoding="utf-8"), str(file))
    if not path.endswith(".jsonl"):
        path = f"{path.rstrip('/')}/{DETAILS}"
    import dvc.api

    try:
        with dvc.api.open(path, repo=str(repo), rev=rev, encoding="utf-8") as fh:
            text = fh.read()
    except Exception as exc:  # dvc raises many types; say which side failed
        raise MiddoError(f"{spec}: cannot read {path} at revision {rev}: {exc}") from exc
    return parse_details(text, f"{rev}:{path}")


def _index(rows: Iterable[Mapping[str, Any]], side: str) -> dict[str, dict[str, bool]]:
    """``{suite: {id: correct}}`` in first-seen order; a repeated ``(suite, id)`` is refused (pairing is ambiguous)."""
    out: dict[str, dict[str, bool]] = {}
    for row in rows:
        items = out.setdefault(row["suite"], {})
        key = str(row["id"])
        if key in items:
            raise MiddoError(f"{side}: item {row['suite']}/{key} appears twice; cannot pair items")
        items[key] = bool(row["correct"])
    return out


def verdict(low: float, high: float) -> str:
    """``outside noise: B better`` / ``outside noise: A better`` when the interval of B - A excludes 0."""
    if low > 0:
        return "outside noise: B better"
    if high < 0:
        return "outside noise: A better"
    return "within noise"


def _row(a: list[bool], b: list[bool], low: float, high: float) -> dict[str, Any]:
    fixed = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    broken = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    acc_a, acc_b = sum(a) / len(a), sum(b) / len(b)
    return {
        "n": len(a),
        "accuracy_a": round(acc_a, 4),
        "accuracy_b": round(acc_b, 4),
        "delta": round(acc_b - acc_a, 4),
        "low": round(low, 4),
        "high": round(high, 4),
        "fixed": fixed,
        "broken": broken,
        "p_mcnemar": float(f"{mcnemar_exact(fixed, broken):.4g}"),
        "verdict": verdict(low, high),
    }


def compare_results(
    a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]], resamples: int, seed: int, level: float = 0.95
) -> dict[str, Any]:
    """Pair two evaluations' per-item results on ``(suite, id)`` and say, per suite and on average, what changed.

    Accuracies are over the paired items only (so they can differ from ``eval.json`` when some items are unpaired).
    ``fixed``: items only B got right; ``broken``: items only A got right. The average row averages the suites (as
    ``eval.json``'s ``average``) and its interval resamples items within each suite; its McNemar p-value pools the
    discordant items of all suites.

    Args:
        a: per-item results (``suite``, ``id``, ``correct``) of the reference evaluation, e.g. the earlier round.
        b: the same for the evaluation being judged.
        resamples: bootstrap resamples (``eval.bootstrap``).
        seed: bootstrap seed (``base.seed``), so the same inputs always give the same interval.
        level: the interval's coverage.

    Returns:
        ``{"suites": {suite: row}, "average": row, "unpaired": {"only_a": {suite: [ids]}, "only_b": ...},
        "resamples", "seed", "level"}``; a row holds ``n``, ``accuracy_a``, ``accuracy_b``, ``delta``, ``low``,
        ``high``, ``fixed``, ``broken``, ``p_mcnemar`` and ``verdict``.

    Raises:
        MiddoError: an item repeated on one side, or suites with no item in common (all such suites named).
    """
    ia, ib = _index(a, "A"), _index(b, "B")
    suites = [*ia, *(s for s in ib if s not in ia)]
    paired_a: dict[str, list[bool]] = {}
    paired_b: dict[str, list[bool]] = {}
    only_a: dict[str, list[str]] = {}
    only_b: dict[str, list[str]] = {}
    empty = []
    for s in suites:
        xa, xb = ia.get(s, {}), ib.get(s, {})
        common = [k for k in xa if k in xb]
        if not common:
            empty.append(f"suite {s}: no items in common (A has {len(xa)}, B has {len(xb)})")
            continue
        paired_a[s], paired_b[s] = [xa[k] for k in common], [xb[k] for k in common]
        if missing := [k for k in xa if k not in xb]:
            only_a[s] = missing
        if missing := [k for k in xb if k not in xa]:
            only_b[s] = missing
    if empty:
        raise MiddoError("cannot compare: " + "; ".join(empty) + " (evaluate both on the same suites and items)")
    per_suite, (avg_lo, avg_hi) = bootstrap_delta(paired_a, paired_b, resamples, seed, level)
    rows = {s: _row(paired_a[s], paired_b[s], *per_suite[s]) for s in paired_a}
    acc_a = sum(sum(v) / len(v) for v in paired_a.values()) / len(paired_a)
    acc_b = sum(sum(v) / len(v) for v in paired_b.values()) / len(paired_b)
    fixed, broken = sum(r["fixed"] for r in rows.values()), sum(r["broken"] for r in rows.values())
    average = {
        "n": sum(r["n"] for r in rows.values()),
        "accuracy_a": round(acc_a, 4),
        "accuracy_b": round(acc_b, 4),
        "delta": round(acc_b - acc_a, 4),
        "low": round(avg_lo, 4),
        "high": round(avg_hi, 4),
        "fixed": fixed,
        "broken": broken,
        "p_mcnemar": float(f"{mcnemar_exact(fixed, broken):.4g}"),
        "verdict": verdict(avg_lo, avg_hi),
    }
    return {
        "suites": rows,
        "average": average,
        "unpaired": {"only_a": only_a, "only_b": only_b},
        "resamples": resamples,
        "seed": seed,
        "level": level,
    }


def render(result: Mapping[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """A markdown table (readable as plain text): one row per suite, then the average, then unpaired items."""
    pct = round(result["level"] * 100)
    head = f"| suite | n | A | B | B - A | {pct}% interval | fixed | broken | McNemar p | verdict |"
    lines = [f"A: {a_name}", f"B: {b_name}", "", head, "|" + " --- |" * 10]
    for name, r in [*result["suites"].items(), ("average", result["average"])]:
        lines.append(
            f"| {name} | {r['n']} | {r['accuracy_a']:.3f} | {r['accuracy_b']:.3f} | {r['delta']:+.3f} "
            f"| [{r['low']:+.3f}, {r['high']:+.3f}] | {r['fixed']} | {r['broken']} | {r['p_mcnemar']:.3g} "
            f"| {r['verdict']} |"
        )
    lines += ["", f"paired bootstrap: {result['resamples']} resamples, seed {result['seed']}"]
    for side, label in (("only_a", "only in A"), ("only_b", "only in B")):
        for suite, ids in result["unpaired"][side].items():
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
            lines.append(f"unpaired, {label}: {suite}: {shown}")
    return "\n".join(lines) + "\n"
