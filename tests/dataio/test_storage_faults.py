"""Real storage faults against a real stage (stages/import_seed.py in a subprocess): disk full, file size limit,
SIGKILL.

Each case first writes a good output, then makes a second write fail, and checks that the first output is byte for
byte what it was, that no temp file is left behind, and (for the kill) that a re-run completes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _dataset(path: Path, n: int, pad: int = 400) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"Question {i}: " + "x" * pad, "output": f"Answer {i}."}) + "\n")
    return path


def _params(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["limit"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _import_cmd(source: Path, out: Path, params: Path) -> list[str]:
    """The import_seed stage reading ``source`` (its params file, beside the source, names it as data.seed_path)."""
    raw = yaml.safe_load(params.read_text())
    raw["data"]["seed_path"] = str(source)
    own = source.with_name(f"params-{source.stem}.yaml")
    own.write_text(yaml.safe_dump(raw))
    return [
        sys.executable,
        str(ROOT / "stages/import_seed.py"),
        f"--out={out}",
        f"--metrics={out.parent / 'import.json'}",
        f"--params={own}",
    ]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _good_first_run(tmp_path: Path, out: Path) -> tuple[Path, bytes]:
    params = _params(tmp_path)
    small = _dataset(tmp_path / "small.jsonl", 50, pad=10)
    subprocess.run(_import_cmd(small, out, params), check=True, capture_output=True)
    return params, (out / "train.jsonl").read_bytes()


def _limit_file_size(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def test_file_size_limit_gives_clear_error_and_keeps_old_output(tmp_path):
    out = tmp_path / "round_0"
    params, before = _good_first_run(tmp_path, out)
    big = _dataset(tmp_path / "big.jsonl", 5000)  # ~2 MB of output
    proc = subprocess.run(
        _import_cmd(big, out, params), capture_output=True, text=True, preexec_fn=_limit_file_size(256 * 1024)
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"could not write {out}" in proc.stderr and "File too large" in proc.stderr
    assert (out / "train.jsonl").read_bytes() == before
    assert _leftovers(out) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KiB tmpfs: a real file system that really fills up (needs root, as in CI; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_gives_clear_error_and_keeps_old_output(tmp_path, tiny_tmpfs):
    out = tiny_tmpfs / "round_0"
    params, before = _good_first_run(tmp_path, out)
    big = _dataset(tmp_path / "big.jsonl", 5000)  # ~2 MB: cannot fit in 512 KiB
    proc = subprocess.run(_import_cmd(big, out, params), capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"could not write {out}" in proc.stderr and "No space left on device" in proc.stderr
    assert (out / "train.jsonl").read_bytes() == before
    assert _leftovers(out) == []


def test_stage_killed_mid_write_leaves_old_output_then_rerun_completes(tmp_path):
    out = tmp_path / "round_0"
    params, before = _good_first_run(tmp_path, out)
    big = _dataset(tmp_path / "big.jsonl", 60000, pad=1000)  # ~60 MB, so the write takes a while
    proc = subprocess.Popen(_import_cmd(big, out, params), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed_mid_write = False
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in out.glob(".train.jsonl.*") if p.stat().st_size > 0]
        if temps:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_mid_write, "the import finished before it could be killed mid-write"
    assert (out / "train.jsonl").read_bytes() == before  # the old output, whole

    subprocess.run(_import_cmd(big, out, params), check=True, capture_output=True)
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 60000
    assert json.loads(lines[-1])["output"] == "Answer 59999."
