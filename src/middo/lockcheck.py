"""``middo verify-lock``: did my run reproduce the committed reference run, and if not, why?

The committed ``dvc.lock`` is the record of a reference ``make demo``; after a user's own ``dvc repro`` the workspace
``dvc.lock`` holds the hashes of what their machine produced. Comparing outputs alone cannot tell a bug from a
machine that computes differently (bfloat16 on one CPU, float32 on another, AVX-512 vs AVX2 kernels): every output
downstream of the first difference differs too. So the stages are walked in pipeline order, and each stage whose
outputs differ is explained by what differs before it:

- an input (code, data, params) that no earlier stage produced: the user changed something, not reproduced;
  except the machine settings (``base.dtype``, ``base.device``): ``base.dtype: float32`` where the reference ran
  ``auto`` is how one compares across CPU types, so those are judged by what the env record says they resolved to;
- an input an earlier stage produced: it follows from that stage;
- nothing in its inputs, but its env record (:mod:`middo.provenance`, ``metrics/round_R/env/``) names another
  device, dtype or CPU flags: the machine differs, which is expected and exits 0 with the reason;
- nothing in its inputs, another library version: not the locked environment, not reproduced;
- nothing at all: the stage is not deterministic (or has a bug), not reproduced.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from middo.errors import MiddoError
from middo.provenance import MACHINE_FIELDS

# Outputs whose bytes change on every run by design: they are left out of the check, with the reason shown.
VOLATILE = {
    "metrics/round_*/train.json": "wall-clock time and throughput of training",
}
ENV_RECORD = "*/env/*.json"  # a stage's env record among its outs (provenance.env_path)

# Params that choose the machine's settings rather than the computation: where only these differ, the stage is judged
# by its env record (the device and dtype they resolved to, the CPU), not as an edited input. Without this, the
# documented way to compare a bfloat16 CPU with a float32 reference (base.dtype: float32) ends in "NOT reproduced".
MACHINE_PARAMS = ("base.dtype", "base.device")

REPRODUCED = "reproduced"
MACHINE = "differs only where the machine differs"
NOT_REPRODUCED = "NOT reproduced"


@dataclass
class StageLock:
    """One stage of a parsed dvc.lock: path -> hash for deps and outs, flattened ``file:key`` -> value for params."""

    deps: dict[str, str]
    params: dict[str, object]
    outs: dict[str, str]
    env_path: str | None


@dataclass
class StageFinding:
    """Why one stage's outputs differ from the reference's."""

    stage: str
    differ: list[str]
    cause: str  # "input", "upstream", "machine", "software", "no env record", "unexplained"
    inputs: list[str] = field(default_factory=list)  # the differing inputs (cause input or upstream)
    env: list[tuple[str, object, object]] = field(default_factory=list)  # (field, reference, here)
    settings: list[tuple[str, object, object]] = field(default_factory=list)  # MACHINE_PARAMS that differ

    @property
    def explained(self) -> bool:
        return self.cause in ("upstream", "machine")


@dataclass
class LockComparison:
    same: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the reference, not (yet) in this run's lock
    volatile: list[str] = field(default_factory=list)
    findings: list[StageFinding] = field(default_factory=list)  # stages with differing outputs, pipeline order

    @property
    def verdict(self) -> str:
        if self.missing or any(not f.explained for f in self.findings):
            return NOT_REPRODUCED
        return MACHINE if self.findings else REPRODUCED

    @property
    def ok(self) -> bool:
        return self.verdict != NOT_REPRODUCED


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, DVC's names for params and metrics; an empty mapping stays a value."""
    flat: dict[str, object] = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_lock(lock: dict) -> dict[str, StageLock]:
    """Stage name -> :class:`StageLock`, in the order of the parsed dvc.lock ``lock``."""
    stages = {}
    for name, st in ((lock or {}).get("stages") or {}).items():
        outs = {o["path"]: o.get("md5", "") for o in st.get("outs", [])}
        params = {
            f"{file}:{key}": value
            for file, tree in (st.get("params") or {}).items()
            for key, value in flatten(tree).items()
        }
        stages[name] = StageLock(
            deps={d["path"]: d.get("md5", "") for d in st.get("deps", [])},
            params=params,
            outs=outs,
            env_path=next((p for p in outs if fnmatch.fnmatch(p, ENV_RECORD)), None),
        )
    return stages


def _within(a: str, b: str) -> bool:
    """``a`` is ``b`` or lies inside or around it (a dep on a folder holding an output, or on a file in one)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _producers(stages: dict[str, StageLock], path: str, but: str) -> list[str]:
    return [name for name, st in stages.items() if name != but and any(_within(path, out) for out in st.outs)]


def pipeline_order(stages: dict[str, StageLock]) -> list[str]:
    """Stages so that each comes after those producing its inputs (dvc.lock groups ``foreach`` stages by name, which
    puts ``diagnose@2`` before ``train@1``); ties keep the lock's order."""
    after = {name: set() for name in stages}
    for name, st in stages.items():
        for dep in st.deps:
            after[name].update(_producers(stages, dep, name))
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and after[n] <= set(order)]
        order.append(ready[0] if ready else next(n for n in stages if n not in order))  # a cycle: keep going
    return order


def _is_volatile(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in VOLATILE)


def env_differences(reference: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(field, reference value, this run's value)`` for every env field that differs, flattened (``cpu.avx2``)."""
    ref, cur = flatten(reference), flatten(current)
    return [(k, ref.get(k), cur.get(k)) for k in sorted(ref.keys() | cur.keys()) if ref.get(k) != cur.get(k)]


def _is_machine(field_name: str) -> bool:
    return field_name.split(".", 1)[0] in MACHINE_FIELDS


def compare_locks(reference: dict, current: dict, ref_env=None, cur_env=None) -> LockComparison:
    """Compare every output of ``reference`` with ``current`` (both parsed dvc.lock files) and explain each stage whose
    outputs differ.

    Args:
        ref_env, cur_env: env record path -> its parsed content, or None where there is none (the reference's from
            git, this run's from the workspace); ``{}`` for both compares outputs without explaining machines.
    """
    ref_env, cur_env = ref_env or {}, cur_env or {}
    ref, cur = parse_lock(reference), parse_lock(current)
    result = LockComparison()
    for name in pipeline_order(ref):
        st = ref[name]
        here = cur.get(name)
        differ = []
        for path, md5 in sorted(st.outs.items()):
            if path == st.env_path:
                continue  # compared field by field below
            if _is_volatile(path):
                result.volatile.append(path)
            elif here is None or path not in here.outs:
                result.missing.append(path)
            else:
                (result.same if here.outs[path] == md5 else differ).append(path)
        result.differ += differ
        if differ:
            result.findings.append(_explain(name, differ, st, here, ref, ref_env, cur_env))
    return result


def _explain(name, differ, st: StageLock, here: StageLock, stages, ref_env, cur_env) -> StageFinding:
    changed = sorted(p for p in st.deps.keys() | here.deps.keys() if st.deps.get(p) != here.deps.get(p))
    keys = sorted(k for k in st.params.keys() | here.params.keys() if st.params.get(k, st) != here.params.get(k, st))
    settings = [(k.split(":", 1)[1], st.params.get(k), here.params.get(k)) for k in keys if _is_setting(k)]
    changed += [f"param {k.split(':', 1)[1]}" for k in keys if not _is_setting(k)]
    own = [p for p in changed if p.startswith("param ") or not _producers(stages, p, name)]
    if own:
        return StageFinding(name, differ, "input", own)
    if changed:
        return StageFinding(name, differ, "upstream", changed)
    ref_record, cur_record = ref_env.get(st.env_path), cur_env.get(st.env_path)
    if ref_record is None or cur_record is None:
        return StageFinding(name, differ, "no env record", settings=settings)
    env = env_differences(ref_record, cur_record)
    if not env:
        return StageFinding(name, differ, "unexplained", settings=settings)
    cause = "machine" if all(_is_machine(f) for f, _, _ in env) else "software"
    return StageFinding(name, differ, cause, env=env, settings=settings)


def _is_setting(param_key: str) -> bool:
    """Whether a flattened ``file:key`` param is one of :data:`MACHINE_PARAMS`."""
    return param_key.split(":", 1)[-1] in MACHINE_PARAMS


def _show(value: object) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _fields(env: list[tuple[str, object, object]], machine: bool | None = None) -> str:
    return ", ".join(
        f"{k} {_show(a)} in the reference, {_show(b)} here"
        for k, a, b in env
        if machine is None or _is_machine(k) == machine
    )


def _why(f: StageFinding) -> str:
    if f.cause == "input":
        return f"its inputs differ from the reference's: {', '.join(f.inputs)} (changed here, made by no stage)"
    if f.cause == "upstream":
        return f"follows from its inputs, made by earlier stages: {', '.join(f.inputs)}"
    same = "its inputs are identical to the reference's"
    if f.settings:
        same += f" but for the machine settings ({_fields(f.settings)})"
    if f.cause == "machine":
        return f"{same}; the machine differs ({_fields(f.env)}): a kernel or dtype difference, not the code's"
    if f.cause == "software":
        return (
            f"{same}; library versions differ ({_fields(f.env, machine=False)}): install the locked ones "
            "(requirements-cpu.lock)"
        )
    if f.cause == "no env record":
        return f"{same}; no env record ({f.stage}'s in the reference or here) to tell whether the machine differs"
    return f"{same} and so is its env: the stage is not deterministic (a bug)"


def _read_git(repo: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _env_records(lock: dict, read) -> dict[str, dict | None]:
    records = {}
    for st in parse_lock(lock).values():
        if st.env_path:
            text = read(st.env_path)
            records[st.env_path] = json.loads(text) if text else None
    return records


def verify_lock(repo: str | Path = ".", rev: str = "HEAD") -> tuple[LockComparison, str]:
    """Compare the workspace ``dvc.lock`` and env records with those committed at ``rev``; returns the comparison
    and a report ending in one verdict (:data:`REPRODUCED`, :data:`MACHINE` or :data:`NOT_REPRODUCED`).

    Raises:
        MiddoError: no workspace dvc.lock (nothing ran yet) or none at ``rev``.
    """
    repo = Path(repo)
    lock_path = repo / "dvc.lock"
    if not lock_path.is_file():
        raise MiddoError(f"{lock_path}: not found; run `dvc repro` (or `make demo`) first")
    text = _read_git(repo, rev, "dvc.lock")
    if text is None:
        raise MiddoError(f"cannot read dvc.lock at git revision {rev}: commit the reference run's dvc.lock first")
    reference, current = yaml.safe_load(text), yaml.safe_load(lock_path.read_text())

    def here(path: str) -> str | None:
        return (repo / path).read_text() if (repo / path).is_file() else None

    ref_env = _env_records(reference, lambda p: _read_git(repo, rev, p))
    cur_env = _env_records(reference, here)
    result = compare_locks(reference, current, ref_env, cur_env)
    return result, report(result, rev)


def report(result: LockComparison, rev: str) -> str:
    """The text ``middo verify-lock`` prints: counts, the first stage that differs and why, each output, verdict."""
    lines = [
        f"dvc.lock at {rev} vs this workspace: {len(result.same)} outputs identical, {len(result.differ)} differ, "
        f"{len(result.missing)} missing"
    ]
    if result.findings:
        first = result.findings[0]
        lines.append(f"first stage that differs: {first.stage}: {_why(first)}")
    for f in result.findings:
        lines += [f"  DIFFERS  {p}  ({f.stage}: {f.cause})" for p in f.differ]
    lines += [f"  MISSING  {p} (its stage has not run here)" for p in result.missing]
    for path in result.volatile:
        reason = next(r for pat, r in VOLATILE.items() if fnmatch.fnmatch(path, pat))
        lines.append(f"  skipped  {path} ({reason})")
    verdict = result.verdict
    if verdict == REPRODUCED:
        lines.append(REPRODUCED)
    elif verdict == MACHINE:
        roots = [f for f in result.findings if f.cause == "machine"]
        reason = "; ".join(f"{f.stage}: {_fields(f.env)}" for f in roots)
        lines.append(
            f"{MACHINE} ({reason}); every other difference follows from it. Expected: see docs/reproducibility.md"
        )
    else:
        bad = next((f for f in result.findings if not f.explained), None)
        why = f"{bad.stage}: {_why(bad)}" if bad else f"{len(result.missing)} outputs missing"
        lines.append(f"{NOT_REPRODUCED}: {why}")
    return "\n".join(lines) + "\n"
