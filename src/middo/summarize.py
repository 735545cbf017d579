"""Across-round summary: accuracy (with its 95% interval) per round and suite, dataset size and flag counts, and
whether each round's change over the round it refines is noise, as JSON, plot data and PNGs.

The round list comes from params (not a glob), so a stale ``metrics/round_9`` from an old experiment never leaks in.
The noise verdicts pair each round R with the round P it refines (params ``rounds``: ``'R': P``), item by item
(:mod:`middo.evaluate.compare`), because two overlapping intervals can still hide a real, paired difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_bytes, atomic_write_text
from middo.errors import MiddoError
from middo.evaluate.compare import DETAILS, compare_results, parse_details
from middo.evaluate.stats import intervals
from middo.plots import figure_png


def _read(path: Path, key: str | None = None) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get(key, data) if key else data


def _details(round_dir: Path) -> list[dict] | None:
    path = round_dir / DETAILS
    return parse_details(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else None


def _interval(ev: dict, round_dir: Path, resamples: int, seed: int) -> dict | None:
    """The eval.json's interval; for an eval.json written before intervals existed, computed from its details."""
    if "interval" in ev:
        return ev["interval"]
    rows = _details(round_dir)
    if rows is None:
        return None
    correct: dict[str, list[bool]] = {}
    for row in rows:
        correct.setdefault(row["suite"], []).append(row["correct"])
    return intervals(correct, resamples, seed)


def collect(metrics_dir: str | Path, rounds: Iterable[int], resamples: int, seed: int) -> dict:
    """Gather each round's eval / diagnose / refine / import metrics into one summary.

    Args:
        metrics_dir: the folder holding ``round_R/``.
        rounds: the rounds to report (from params, never a glob).
        resamples: bootstrap resamples for an interval computed here (``eval.bootstrap``).
        seed: its seed (``base.seed``, as the evaluate stage uses).

    Raises:
        MiddoError: a round has no ``eval.json``.
    """
    metrics_dir = Path(metrics_dir)
    out = {"rounds": []}
    for r in sorted(set(rounds)):
        d = metrics_dir / f"round_{r}"
        ev = _read(d / "eval.json")
        if ev is None:
            raise MiddoError(f"{d / 'eval.json'}: missing; run `dvc repro` for round {r} first")
        diag = _read(d / "diagnose.json", "diagnose") or {}
        ref = _read(d / "refine.json", "refine") or {}
        imp = _read(d / "import.json", "import") or {}
        out["rounds"].append(
            {
                "round": r,
                "accuracy": ev.get("accuracy", {}),
                "average": ev.get("average"),
                "interval": _interval(ev, d, resamples, seed),
                "dataset_size": ref.get("size_after", imp.get("kept")),
                "flagged": diag.get("flagged", {}),
                "removed": ref.get("removed", 0),
                "added": ref.get("added", 0),
            }
        )
    return out


def noise(metrics_dir: str | Path, pairs: Iterable[tuple[int, int]], resamples: int, seed: int) -> list[dict]:
    """For each ``(P, R)`` (round R refines round P), :func:`~middo.evaluate.compare.compare_results` of P vs R.

    Unpaired items are given as counts per suite. A pair that cannot be compared (details missing, as for runs
    older than the details file, or no items in common) gets ``skipped``: the reason, instead of failing the summary.
    """
    metrics_dir = Path(metrics_dir)
    out = []
    for prev, r in pairs:
        entry: dict[str, Any] = {"from": prev, "to": r}
        sides = [_details(metrics_dir / f"round_{x}") for x in (prev, r)]
        if None in sides:
            missing = [f"round_{x}/{DETAILS}" for x, rows in zip((prev, r), sides, strict=True) if rows is None]
            out.append({**entry, "skipped": f"missing {', '.join(missing)}"})
            continue
        try:
            res = compare_results(*sides, resamples=resamples, seed=seed)
        except MiddoError as exc:
            out.append({**entry, "skipped": str(exc)})
            continue
        unpaired = {side: {s: len(ids) for s, ids in v.items()} for side, v in res["unpaired"].items()}
        out.append({**entry, "suites": res["suites"], "average": res["average"], "unpaired": unpaired})
    return out


_SHORT = {"within noise": "noise", "outside noise: B better": "better", "outside noise: A better": "worse"}


def render_noise(pairs: list[dict]) -> str:
    """One column per round pair, one row per suite and the average: ``delta [low, high] noise|better|worse``."""
    done = [p for p in pairs if "skipped" not in p]
    lines = []
    if done:
        suites = list(dict.fromkeys(s for p in done for s in p["suites"]))
        cols = [f"{p['from']} -> {p['to']}" for p in done]
        lines += ["| suite | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
        for s in [*suites, "average"]:
            cells = []
            for p in done:
                row = p["average"] if s == "average" else p["suites"].get(s)
                cells.append(
                    f"{row['delta']:+.3f} [{row['low']:+.2f}, {row['high']:+.2f}] {_SHORT[row['verdict']]}"
                    if row
                    else "-"
                )
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [f"{p['from']} -> {p['to']}: skipped ({p['skipped']})" for p in pairs if "skipped" in p]
    return "\n".join(lines) + "\n" if lines else ""


def loss_rows(metrics_dir: str | Path, rounds: Iterable[int]) -> list[dict]:
    """Training loss per optimizer step of each round, from the DVCLive curves the train stage logs
    (``round_R/train/plots/metrics/loss.tsv``); rounds without one (an older run) are left out."""
    rows = []
    for r in sorted(set(rounds)):
        tsv = Path(metrics_dir) / f"round_{r}" / "train" / "plots" / "metrics" / "loss.tsv"
        if tsv.is_file():
            lines = tsv.read_text(encoding="utf-8").splitlines()[1:]
            rows += [
                {"step": int(a), "loss": float(b), "round": f"round {r}"} for a, b in (x.split("\t") for x in lines)
            ]
    return rows


def plot_rows(summary: dict) -> dict[str, list[dict]]:
    """Long-format rows that ``dvc plots`` can draw (one file per plot)."""
    acc, size, flags = [], [], []
    for row in summary["rounds"]:
        values = dict(row["accuracy"])
        if row["average"] is not None:
            values["average"] = row["average"]
        for suite, value in values.items():
            bounds = (row.get("interval") or {}).get(suite)
            acc.append({"round": row["round"], "suite": suite, "accuracy": value, **(bounds or {})})
        size.append({"round": row["round"], "size": row["dataset_size"]})
        for axis, n in row["flagged"].items():
            flags.append({"round": row["round"], "axis": axis, "flagged": n})
    return {"accuracy": acc, "dataset_size": size, "flags": flags}


def _png(rows: list[dict], x: str, y: str, group: str | None, title: str) -> bytes:
    """One line (with its 95% interval bars when the rows carry ``low``/``high``) per ``group`` value, as PNG bytes."""
    groups = sorted({r[group] for r in rows}) if group else [None]
    bars = any("low" in r for r in rows)

    def draw(ax) -> None:
        for i, g in enumerate(groups):
            pts = sorted(
                (r[x], r[y], r.get("low", r[y]), r.get("high", r[y])) for r in rows if group is None or r[group] == g
            )
            shift = (i - (len(groups) - 1) / 2) * 0.25 / max(len(groups), 1) if bars else 0.0  # keep bars apart
            xs, ys = [p[0] + shift for p in pts], [p[1] for p in pts]
            width = 2.5 if g == "average" else 1.2
            if bars:  # the 95% interval; a line per suite still joins the points
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", label=g, linewidth=width, capsize=2, elinewidth=0.8)
            else:
                ax.plot(xs, ys, marker="o", label=g, linewidth=width)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title)
        if x == "round":
            ax.set_xticks(sorted({r[x] for r in rows}))
        if group:  # beside the axes: error bars reach the corners where a legend inside would sit
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return figure_png(draw, size=(7, 3.5))


def summarize(
    metrics_dir: str | Path,
    rounds: Mapping[str | int, int],
    out: str | Path,
    plots_dir: str | Path,
    resamples: int,
    seed: int,
) -> dict:
    """Write ``out`` (summary JSON), the PNGs ``plots_dir/{accuracy,dataset_size,flags}.png`` and their data for
    ``dvc plots``: ``accuracy/<suite>.json`` and ``flags/<axis>.json`` (one file per line, so DVC's templates, which
    colour by file and revision, draw a line per suite and overlay experiments in ``dvc plots diff``) and
    ``dataset_size.json``.

    Args:
        metrics_dir: the folder holding ``round_R/``.
        rounds: params ``rounds``: round R -> the round P it refines (round 0 is implied); pairs keep this order.
        out: the summary JSON: ``rounds`` (one row per round, with ``interval``) and ``noise`` (one entry per pair).
        plots_dir: where the plot data and PNGs go.
        resamples: bootstrap resamples (``eval.bootstrap``).
        seed: bootstrap seed (``base.seed``).

    Raises:
        MiddoError: a round has no ``eval.json``, or a details file is malformed.
    """
    pairs = [(int(prev), int(r)) for r, prev in rounds.items()]
    summary = collect(metrics_dir, [0, *(r for _, r in pairs)], resamples, seed)
    summary["noise"] = noise(metrics_dir, pairs, resamples, seed)
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    plots_dir = Path(plots_dir)
    rows = plot_rows(summary)
    spec = {
        "accuracy": ("accuracy", "suite", "Accuracy per round"),
        "dataset_size": ("size", None, "Dataset size per round"),
        "flags": ("flagged", "axis", "Flagged samples per round"),
    }
    for name, data in rows.items():
        y, group, title = spec[name]
        if group is None:
            atomic_write_text(plots_dir / f"{name}.json", json.dumps(data, indent=1) + "\n")
        else:  # a folder with one file per line: `dvc plots show/diff` draws each file (suite, axis) as its own line
            for key in sorted({r[group] for r in data}):
                series = [{k: v for k, v in r.items() if k != group} for r in data if r[group] == key]
                atomic_write_text(plots_dir / name / f"{key}.json", json.dumps(series, indent=1) + "\n")
        if data:
            atomic_write_bytes(plots_dir / f"{name}.png", _png(data, "round", y, group, title))
    losses = loss_rows(metrics_dir, [row["round"] for row in summary["rounds"]])
    if losses:  # the same curves `dvc plots show` draws from metrics/round_R/train, side by side in one PNG
        atomic_write_bytes(
            plots_dir / "train_loss.png", _png(losses, "step", "loss", "round", "Training loss per step")
        )
    return summary
