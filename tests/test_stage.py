import os
import subprocess
import sys


def test_auto_processes_is_one_per_visible_gpu_and_one_without():
    """``base.processes: auto`` with no GPU in sight (hidden here, so the test holds on a GPU machine too) is one
    process; ``base.device: cpu`` is one process whatever the GPUs; a number stays itself."""
    code = "from middo.stage import process_count as n; print(n('auto'), n('auto', 'cpu'), n(3), n(1, 'cuda'))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "3", "1"]


SCRIPT = """
import atexit, sys, threading, time
from middo.errors import MiddoError
from middo.stage import run

marker, how = sys.argv[1], sys.argv[2]

def main():
    atexit.register(lambda: open(marker, "a").write("atexit "))
    sys.stdout.write("x" * 100_000)
    sys.stdout.write("tail")  # a pipe is block-buffered: this is still in the buffer when main returns
    if how == "thread":  # a non-daemon thread still working: the process waits for it, as a normal exit does
        threading.Thread(target=lambda: (time.sleep(0.5), open(marker, "a").write("thread "))).start()
    if how == "error":
        raise MiddoError("bad input")

raise SystemExit(run("t", main, fast_exit=True) + 10)  # only reached when run returns (no fast exit)
"""


def _stage(tmp_path, how):
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    marker = tmp_path / f"marker-{how}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as it usually is
    out = subprocess.run([sys.executable, str(script), str(marker), how], capture_output=True, text=True, env=env)
    return out, marker.read_text() if marker.exists() else ""


def test_fast_exit_runs_atexit_handlers_and_flushes_then_ends_with_the_stage_status(tmp_path):
    """The stage scripts end with ``run(..., fast_exit=True)``: the process ends right there with the stage's status
    (not the caller's ``+ 10``), after the atexit handlers ran and every buffered byte of stdout went out."""
    out, marker = _stage(tmp_path, "ok")
    assert (out.returncode, marker, out.stdout[-5:], len(out.stdout)) == (0, "atexit ", "xtail", 100_004), out.stderr
    out, marker = _stage(tmp_path, "error")
    assert (out.returncode, marker, out.stdout[-5:], len(out.stdout)) == (2, "atexit ", "xtail", 100_004)
    assert out.stderr.strip().endswith("t: error: bad input")


def test_fast_exit_waits_like_a_normal_exit_while_a_non_daemon_thread_runs(tmp_path):
    out, marker = _stage(tmp_path, "thread")
    assert (out.returncode, marker, out.stdout[-5:], len(out.stdout)) == (10, "thread atexit ", "xtail", 100_004), (
        out.stderr
    )
