"""``middo diff A B``: what changed between two dataset versions, record by record, with lineage.

``dvc diff`` says which files changed; this says which *samples* changed, on which axis and by which operation.
A version is a round (``round_2`` or ``2``), a path to a JSONL file, or either prefixed with a git revision
(``HEAD~1:round_2``, ``v1:data/round_1/train.jsonl``), read through ``dvc.api`` from the cache or the remote.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

from middo.dataio.readers import read_dataset
from middo.errors import MiddoError
from middo.records import Record


def _path_of(version: str) -> str:
    m = re.fullmatch(r"(?:round_)?(\d+)", version)
    return f"data/round_{m.group(1)}/train.jsonl" if m else version


def load_version(version: str, repo: str | Path = ".") -> list[Record]:
    """Records of a dataset version (see module doc for the accepted forms)."""
    rev, _, spec = version.rpartition(":") if ":" in version else ("", "", version)
    path = _path_of(spec)
    if not rev:
        full = Path(repo) / path
        if not full.is_file():
            raise MiddoError(f"{full}: no such dataset file (run `dvc repro` or `dvc pull` first)")
        return read_dataset(full).records
    import tempfile

    import dvc.api

    try:
        with dvc.api.open(path, repo=str(repo), rev=rev, encoding="utf-8") as fh:
            text = fh.read()
    except Exception as exc:  # dvc raises many types; add which version failed
        raise MiddoError(f"{version}: cannot read {path} at revision {rev}: {exc}") from exc
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
    try:
        return read_dataset(tmp.name).records
    finally:
        Path(tmp.name).unlink(missing_ok=True)


def diff_records(a: list[Record], b: list[Record]) -> dict:
    """Classify every record: kept, replaced (a child of a removed record), added, removed without successor."""
    a_ids, b_ids = {r.id: r for r in a}, {r.id: r for r in b}
    new = [r for r in b if r.id not in a_ids]
    gone = {rid for rid in a_ids if rid not in b_ids}
    replaced = [r for r in new if r.parent_id in gone]
    added = [r for r in new if r.parent_id not in gone]
    successors = {r.parent_id for r in replaced}
    removed = [a_ids[rid] for rid in sorted(gone - successors)]
    by_axis: Counter = Counter()
    for r in replaced:
        by_axis[(r.axis or "-", r.op, "replaced")] += 1
    for r in added:
        by_axis[(r.axis or "-", r.op, "added")] += 1
    by_axis[("-", "-", "removed")] += len(removed)
    return {
        "size_a": len(a),
        "size_b": len(b),
        "kept": len(b) - len(new),
        "replaced": replaced,
        "added": added,
        "removed": removed,
        "parents": {r.parent_id: a_ids[r.parent_id] for r in replaced},
        "by_axis": {f"{ax}/{op}/{kind}": n for (ax, op, kind), n in sorted(by_axis.items()) if n},
    }


def render(d: dict, a_name: str, b_name: str, show: int = 5) -> str:
    """Human-readable diff: counts per axis, then a few examples with their lineage."""
    out = io.StringIO()
    out.write(f"{a_name}: {d['size_a']} records -> {b_name}: {d['size_b']} records\n")
    out.write(
        f"  kept {d['kept']}, replaced {len(d['replaced'])}, added {len(d['added'])}, removed {len(d['removed'])}\n"
    )
    for key, n in d["by_axis"].items():
        out.write(f"  {key:<32} {n}\n")
    for r in d["replaced"][:show]:
        p = d["parents"][r.parent_id]
        out.write(f"\n~ {p.id} -> {r.id}  [{r.axis}/{r.op}, round {r.round}]\n")
        out.write(f"  - {p.instruction[:100]!r}\n  + {r.instruction[:100]!r}\n")
    for r in d["added"][:show]:
        out.write(f"\n+ {r.id}  [{r.axis}/{r.op}, round {r.round}, parent {r.parent_id}]\n")
        out.write(f"  + {r.instruction[:100]!r}\n")
    for r in d["removed"][:show]:
        out.write(f"\n- {r.id}  {r.instruction[:100]!r}\n")
    return out.getvalue()
