"""`bench/gpu_check.sh --dry-run`: every step of the GPU check runs on CPU with tiny shapes and is recorded.

The real run needs a lent GPU; the dry run keeps its plumbing (step commands, timeouts, the JSON records, the summary
table) from rotting in between.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["tests", "diagnose", "knn", "train", "loop"]
EIGHT_MINUTES = 480  # the whole real run, model conversion included, on one H100/H200 (issue 20)


def _script_caps(text: str) -> dict[str, tuple[int, int]]:
    """The CAPS table: step -> (cap on a GPU, cap in a dry run), in seconds."""
    table = re.search(r"^CAPS=\(\n(.*?)^\)", text, re.S | re.M)
    assert table, "bench/gpu_check.sh has no CAPS=( ... ) table of step caps"
    rows = re.findall(r'^\s*"(\S+)\s+(\d+)\s+(\d+)"', table.group(1), re.M)
    return {name: (int(gpu), int(dry)) for name, gpu, dry in rows}


def test_step_caps_fit_the_budget_by_construction():
    """Every cap comes from one table, and the caps plus the reserve fit the budget (the real one in 8 minutes).

    A cap written at a call site escapes the sum; caps over the budget starve the last steps, which then report a
    failure on a machine where everything works.
    """
    text = SCRIPT.read_text(encoding="utf-8")
    inline = [int(n) for n in re.findall(r"(?:\bstep [a-z]+|\blimit) (\d+)", text)]
    budgets = [int(n) for n in re.findall(r"BUDGET=\$\{GPU_CHECK_BUDGET_S:-(\d+)\}", text)]
    assert len(budgets) == 2, budgets  # the dry run's, then the real one's
    dry_budget, gpu_budget = budgets
    assert not inline, f"caps written at call sites ({sum(inline)} s in all, budget {gpu_budget} s): {inline}"

    caps = _script_caps(text)
    variants = re.findall(r'"(\S+) (?:sdpa|flash_attention_2) [01]"', text)
    assert variants == ["sdpa", "sdpa+liger", "fa2", "fa2+liger"]
    assert set(caps) == {"setup", *STEPS} - {"train"} | {f"train.{v}" for v in variants}
    limits = re.findall(r"\$\(limit ([^)]*)\)", text)
    assert limits and all(arg.startswith('"${CAP[') for arg in limits), limits  # every limit comes from the table
    assert set(re.findall(r"CAP\[([a-z.]+)\]", text)) <= set(caps)
    reserve = int(re.search(r"^RESERVE=(\d+)", text, re.M).group(1))
    kill_after = int(re.search(r"KILL_AFTER=(\d+)", text).group(1))
    assert kill_after < reserve  # a killed command's grace period comes out of the reserve

    gpu_total = sum(gpu for gpu, _ in caps.values())
    dry_total = sum(dry for _, dry in caps.values())
    assert gpu_total + reserve <= gpu_budget <= EIGHT_MINUTES, (gpu_total, reserve, gpu_budget)
    assert dry_total + reserve <= dry_budget, (dry_total, reserve, dry_budget)
    assert all(gpu > 0 for gpu, _ in caps.values())  # every step runs on a GPU
    assert caps["setup"][1] > 0 and caps["train.sdpa"][1] > 0  # and these in a dry run


def test_budget_below_the_caps_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--out-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "GPU_CHECK_BUDGET_S": "60"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "over the budget of 60 s" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


@pytest.mark.slow
def test_dry_run_records_every_step(base_model_dir, tmp_path):
    out = tmp_path / "results"
    cmd = ["bash", "bench/gpu_check.sh", "--dry-run", "--out-dir", str(out), "--model", str(base_model_dir)]
    proc = subprocess.run(
        [*cmd, "--python", sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=540, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    for step in STEPS:
        doc = json.loads((out / f"gpu_{step}.json").read_text(encoding="utf-8"))
        assert doc["step"] == step and doc["dry_run"] is True and doc["exit_status"] == 0
        assert doc["command"] and doc["seconds"] >= 0
        if step == "tests":  # CUDA is hidden in a dry run: the GPU-marked tests skip, and say why
            assert doc["status"] == "skipped" and "CUDA" in doc["reason"], doc
            assert doc["key_numbers"]["skipped"] >= 1 and doc["key_numbers"]["passed"] == 0
        else:
            assert doc["status"] == "ok", doc
    diag = json.loads((out / "gpu_diagnose.json").read_text(encoding="utf-8"))["key_numbers"]
    assert 0 < diag["loss_fast_floor_frac"] and diag["loss_ratio"] > 0
    variants = json.loads((out / "gpu_train.json").read_text(encoding="utf-8"))["key_numbers"]["variants"]
    assert [v["variant"] for v in variants] == ["sdpa", "sdpa+liger", "fa2", "fa2+liger"]
    assert variants[0]["status"] == "ok" and variants[0]["steps"] == 2 and variants[0]["tokens_per_second"] > 0
    assert all(v["status"] == "skipped" and v["reason"] for v in variants[1:])

    summary = (out / "gpu_summary.md").read_text(encoding="utf-8")
    assert "| step | status | key number | seconds |" in summary
    for step in STEPS:
        assert f"| {step} | " in summary, summary
    assert "dry run" in summary


def test_bad_option_is_refused(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--only", "nonsense", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "unknown step nonsense" in proc.stderr
    assert not list(tmp_path.iterdir())
