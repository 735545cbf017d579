"""Across-round summary: accuracy per round and suite, dataset size and flag counts, as JSON, plot data and PNGs.

The round list comes from params (not a glob), so a stale ``metrics/round_9`` from an old experiment never leaks in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from middo.dataio.atomic import atomic_write_bytes, atomic_write_text
from middo.errors import MiddoError


def _read(path: Path, key: str | None = None) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get(key, data) if key else data


def collect(metrics_dir: str | Path, rounds: Iterable[int]) -> dict:
    """Gather each round's eval / diagnose / refine / import metrics into one summary."""
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
                "dataset_size": ref.get("size_after", imp.get("kept")),
                "flagged": diag.get("flagged", {}),
                "removed": ref.get("removed", 0),
                "added": ref.get("added", 0),
            }
        )
    return out


def plot_rows(summary: dict) -> dict[str, list[dict]]:
    """Long-format rows that ``dvc plots`` can draw (one file per plot)."""
    acc, size, flags = [], [], []
    for row in summary["rounds"]:
        for suite, value in row["accuracy"].items():
            acc.append({"round": row["round"], "suite": suite, "accuracy": value})
        if row["average"] is not None:
            acc.append({"round": row["round"], "suite": "average", "accuracy": row["average"]})
        size.append({"round": row["round"], "size": row["dataset_size"]})
        for axis, n in row["flagged"].items():
            flags.append({"round": row["round"], "axis": axis, "flagged": n})
    return {"accuracy": acc, "dataset_size": size, "flags": flags}


def _png(rows: list[dict], x: str, y: str, group: str | None, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    groups = sorted({r[group] for r in rows}) if group else [None]
    for g in groups:
        pts = sorted((r[x], r[y]) for r in rows if group is None or r[group] == g)
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o", label=g, linewidth=2.5 if g == "average" else 1.2
        )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.set_xticks(sorted({r[x] for r in rows}))
    if group:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summarize(metrics_dir: str | Path, rounds: Iterable[int], out: str | Path, plots_dir: str | Path) -> dict:
    """Write ``out`` (summary JSON) and ``plots_dir/{accuracy,dataset_size,flags}.{json,png}``."""
    summary = collect(metrics_dir, rounds)
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    plots_dir = Path(plots_dir)
    rows = plot_rows(summary)
    spec = {
        "accuracy": ("accuracy", "suite", "Accuracy per round"),
        "dataset_size": ("size", None, "Dataset size per round"),
        "flags": ("flagged", "axis", "Flagged samples per round"),
    }
    for name, data in rows.items():
        atomic_write_text(plots_dir / f"{name}.json", json.dumps(data, indent=1) + "\n")
        if data:
            y, group, title = spec[name]
            atomic_write_bytes(plots_dir / f"{name}.png", _png(data, "round", y, group, title))
    return summary
