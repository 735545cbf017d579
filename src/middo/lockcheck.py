"""``middo verify-lock``: did my run reproduce the committed reference run, output by output?

The committed ``dvc.lock`` is the record of a reference ``make demo``. After a user's own ``dvc repro`` the
workspace ``dvc.lock`` holds the hashes of what their machine produced; comparing the two per output names exactly
what differs, which ``dvc status`` cannot (it only compares the workspace with its own lock).
"""

from __future__ import annotations

import fnmatch
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from middo.errors import MiddoError

# Outputs whose bytes change on every run by design: they are left out of the check, with the reason shown.
VOLATILE = {
    "metrics/round_*/train.json": "wall-clock time and throughput of training",
}


@dataclass
class LockComparison:
    same: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the reference, not (yet) in this run's lock
    volatile: list[str] = field(default_factory=list)
    changed_code: list[str] = field(default_factory=list)  # deps (code, data, params) that differ: a cause

    @property
    def ok(self) -> bool:
        return not self.differ and not self.missing


def _outs(lock: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(output path -> md5, dependency path -> md5) over every stage of a parsed dvc.lock."""
    outs, deps = {}, {}
    for stage in (lock or {}).get("stages", {}).values():
        for entry in stage.get("outs", []):
            outs[entry["path"]] = entry.get("md5", "")
        for entry in stage.get("deps", []):
            deps[entry["path"]] = entry.get("md5", "")
    return outs, deps


def compare_locks(reference: dict, current: dict) -> LockComparison:
    """Compare every output of ``reference`` with the same output in ``current`` (both parsed dvc.lock files)."""
    ref_outs, ref_deps = _outs(reference)
    cur_outs, cur_deps = _outs(current)
    result = LockComparison()
    for path, md5 in sorted(ref_outs.items()):
        if any(fnmatch.fnmatch(path, pattern) for pattern in VOLATILE):
            result.volatile.append(path)
        elif path not in cur_outs:
            result.missing.append(path)
        else:
            (result.same if cur_outs[path] == md5 else result.differ).append(path)
    result.changed_code = sorted(p for p, md5 in ref_deps.items() if p in cur_deps and cur_deps[p] != md5)
    return result


def _git_show(repo: Path, rev: str, path: str) -> str:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiddoError(f"cannot read {path} at git revision {rev}: {proc.stderr.strip()}")
    return proc.stdout


def verify_lock(repo: str | Path = ".", rev: str = "HEAD") -> tuple[LockComparison, str]:
    """Compare the workspace ``dvc.lock`` with the one committed at ``rev``; returns the comparison and a report.

    Raises:
        MiddoError: no workspace dvc.lock (nothing ran yet) or none at ``rev``.
    """
    repo = Path(repo)
    lock_path = repo / "dvc.lock"
    if not lock_path.is_file():
        raise MiddoError(f"{lock_path}: not found; run `dvc repro` (or `make demo`) first")
    reference = yaml.safe_load(_git_show(repo, rev, "dvc.lock"))
    result = compare_locks(reference, yaml.safe_load(lock_path.read_text()))
    lines = [f"dvc.lock at {rev} vs this workspace: {len(result.same)} outputs identical"]
    lines += [f"  DIFFERS  {p}" for p in result.differ]
    lines += [f"  MISSING  {p} (its stage has not run here)" for p in result.missing]
    for path in result.volatile:
        reason = next(r for pat, r in VOLATILE.items() if fnmatch.fnmatch(path, pat))
        lines.append(f"  skipped  {path} ({reason})")
    if result.differ and result.changed_code:
        lines.append(
            "  inputs that differ from the reference (a cause, not a failure): " + ", ".join(result.changed_code)
        )
    lines.append(
        "reproduced" if result.ok else "NOT reproduced: see docs/reproducibility.md for what may differ and why"
    )
    return result, "\n".join(lines) + "\n"
