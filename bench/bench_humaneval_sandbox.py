"""HumanEval grading speed: the 164 canonical solutions through the old runner, ``sandbox: none`` and the sandbox.

``old`` is the runner before the sandbox (a ``python -I`` script in a fresh temp dir with ``setrlimit`` caps), kept
here as the baseline; ``none`` is today's unsandboxed path (``python -I`` with the stdlib guard, program on stdin);
``required`` runs each program in bubblewrap (:mod:`middo.evaluate.sandbox`). Every mode grades the same 164
programs with the same thread pool; rounds alternate the modes so that a change in machine load hits all of them.

    .venv/bin/python bench/bench_humaneval_sandbox.py                  # 3 rounds, 2 workers (~2 min on 2 cores)
    .venv/bin/python bench/bench_humaneval_sandbox.py --workers 1 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, report  # noqa: E402

from middo.evaluate import humaneval, sandbox  # noqa: E402


def _old_run_program(program: str, timeout: float = 5.0, memory_mb: int = 2048) -> bool:
    """The pre-sandbox runner's work per program (its timeout handling aside): a script file, ``python -I``, caps."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (int(timeout) + 1, int(timeout) + 2))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="middo-humaneval-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(program)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(
            [sys.executable, "-I", str(script)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limits, start_new_session=True,
            timeout=timeout,
        )  # fmt: skip
    return proc.returncode == 0


def grade_all(mode: str, programs: list[str], workers: int) -> tuple[float, int]:
    """Wall seconds to grade every program in ``mode``, and how many passed."""
    run = (
        (lambda p: _old_run_program(p))
        if mode == "old"
        else (lambda p: humaneval.run_program(p, sandbox=mode)["passed"])
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(pool.map(run, programs))
    return time.perf_counter() - start, passed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel programs (score's default)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes over all modes")
    ap.add_argument("--modes", nargs="+", default=["old", "none", "required"], choices=["old", "none", "required"])
    ap.add_argument("--out", default="bench/results/humaneval_sandbox.json")
    args = ap.parse_args(argv)

    problems = humaneval.load(None, 0)
    programs = [humaneval.build_program(p["canonical_solution"], p) for p in problems]
    if "required" in args.modes:
        sandbox.resolve("required")  # refuse up front where bwrap cannot run
    for mode in args.modes:  # warm-up: page cache, bwrap's probe
        grade_all(mode, programs[:8], args.workers)
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    passed: dict[str, int] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for mode in args.modes:
            seconds, passed[mode] = grade_all(mode, programs, args.workers)
            times[mode].append(seconds)
    load_after = os.getloadavg()[0]
    base = statistics.median(times[args.modes[0]])
    rows = [
        {
            "mode": mode,
            "programs": len(programs),
            "passed": passed[mode],
            "median_s": statistics.median(times[mode]),
            "min_s": min(times[mode]),
            "ms_per_program": 1000 * statistics.median(times[mode]) / len(programs),
            f"vs_{args.modes[0]}": statistics.median(times[mode]) / base,
        }
        for mode in args.modes
    ]
    meta = machine_info() | {
        "workers": args.workers,
        "rounds": args.rounds,
        "times_s": times,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": load_after,
        "bwrap": sandbox.find_bwrap(),
    }
    report(rows, args.out, meta)


if __name__ == "__main__":
    main()
