"""Seconds per stage of the demo's round 0 and round 1, run by hand (dvc.yaml's own commands) in a scratch copy.

    .venv/bin/python bench/bench_demo_stages.py                      # float32 on an emulated AVX2-only CPU
    .venv/bin/python bench/bench_demo_stages.py --dtype auto --native

Round 2 repeats round 1's stages on data of the same size, and summarize reads JSON, so the demo's time is about
``round 0 + 2 x round 1``. The copy holds the working tree's files (``git ls-files``, untracked ones included), not
the outputs, caches or the teacher's cache, so refine's teacher really generates. ``base.dtype`` is set in the copy's
``params.yaml``; ``--native`` off, the stages see ``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``ATEN_CPU_CAPABILITY=avx2`` (a float32-only AVX2 CPU on a machine with AVX512-BF16). Each stage's wall time is the
whole process (imports, model loads, writes), as ``dvc repro`` pays it, with the 1-minute load average after it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_profile import AVX2  # noqa: E402
from common import machine_info, report  # noqa: E402

ORDER = [
    ("base_model", None),
    ("import_seed", None),
    ("train_seed", None),
    ("evaluate_seed", None),
    ("diagnose", "1"),
    ("refine", "1"),
    ("train", "1"),
    ("evaluate", "1"),
]


def commands(dvc_yaml: Path, rounds: dict[str, str]) -> list[tuple[str, str]]:
    """``(stage name, shell command)`` for :data:`ORDER`, with ``${key}``/``${item}`` filled as DVC's foreach does."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    out = []
    for name, key in ORDER:
        spec = stages[name]
        cmd = spec["do"]["cmd"] if key else spec["cmd"]
        if key:
            cmd = cmd.replace("${key}", key).replace("${item}", str(rounds[key]))
        out.append((f"{name}@{key}" if key else name, re.sub(r"\s+", " ", cmd).strip()))
    return out


def scratch_copy(dst: Path, dtype: str) -> None:
    """The working tree's files (no outputs, no caches) with ``base.dtype`` set."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if rel.startswith(("metrics/", "reports/", "models/round", "data/round")) or not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    params = dst / "params.yaml"
    text = params.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^(  dtype: )\S+", rf"\g<1>{dtype}", text, count=1)
    if n != 1:
        sys.exit("params.yaml: base.dtype not found")
    params.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", help="base.dtype in the copy")
    ap.add_argument("--native", action="store_true", help="no AVX2 emulation")
    ap.add_argument("--out", default=str(ROOT / "bench/results/demo_stages_cpu_float32_avx2.json"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="middo-demo-stages-"))
    scratch_copy(work, args.dtype)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env["PATH"] = f"{ROOT / '.venv/bin'}:{env['PATH']}"
    env["PYTHONPATH"] = str(work / "src")  # the copy's package, not the editable install's live checkout
    if not args.native:
        env.update(AVX2)
    rounds = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))["rounds"]
    load_before = os.getloadavg()
    rows = []
    for name, cmd in commands(work / "dvc.yaml", rounds):
        start = time.perf_counter()
        proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        rows.append({"stage": name, "seconds": seconds, "rc": proc.returncode, "load_1min": os.getloadavg()[0]})
        print(f"{name:14} {seconds:7.1f} s rc {proc.returncode} load {os.getloadavg()[0]:.1f}", flush=True)
        (work / "logs").mkdir(exist_ok=True)
        (work / "logs" / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            break
    r0 = sum(r["seconds"] for r in rows if not r["stage"].endswith("@1"))
    r1 = sum(r["seconds"] for r in rows if r["stage"].endswith("@1"))
    rows.append({"stage": "round 0 + 2 x round 1 (estimate)", "seconds": r0 + 2 * r1})
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dtype": args.dtype,
        "emulation": None if args.native else AVX2,
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "scratch": str(work),
    }
    report(rows, args.out, meta)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
