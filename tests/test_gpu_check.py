"""`bench/gpu_check.sh --dry-run`: every step of the GPU check runs on CPU with tiny shapes and is recorded.

The real run needs a lent GPU; the dry run keeps its plumbing (step commands, timeouts, the JSON records, the summary
table) from rotting in between.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["tests", "diagnose", "knn", "train", "loop"]


@pytest.mark.slow
def test_dry_run_records_every_step(base_model_dir, tmp_path):
    out = tmp_path / "results"
    cmd = ["bash", "bench/gpu_check.sh", "--dry-run", "--out-dir", str(out), "--model", str(base_model_dir)]
    proc = subprocess.run(
        [*cmd, "--python", sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
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
