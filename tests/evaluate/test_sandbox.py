"""Model-written code graded by HumanEval stays contained: each attack below runs through ``humaneval.run_program``
(the suite's run path) on real files, a real listener and a real fork bomb, and must leave the host as it was.

The attacks use ``posix`` and ``ctypes`` rather than ``os``/``shutil`` so they walk around the stdlib guard, as real
code could: what they test is the bubblewrap sandbox itself.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from middo.config import ConfigError, load_params
from middo.evaluate import humaneval, sandbox
from middo.evaluate.suite import check_suites

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandboxes are Linux namespaces")

# Removes a tree with the raw syscalls (os.unlink, os.rmdir and shutil.rmtree are disabled by the guard).
RMTREE = """
import posix
def rmtree(path):
    for entry in posix.scandir(path):
        rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else posix.unlink(entry.path)
    posix.rmdir(path)
rmtree({path!r})
"""


@pytest.fixture
def victim():
    """A folder with a file in the real temp dir, outside any sandbox scratch."""
    with tempfile.TemporaryDirectory(prefix="middo-victim-") as tmp:
        (Path(tmp) / "keep.txt").write_text("precious")
        yield Path(tmp)


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except TimeoutError:
                continue
            accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_deleting_a_folder_outside_the_scratch_is_contained(victim):
    res = humaneval.run_program(RMTREE.format(path=str(victim)))
    assert not res["passed"] and res["status"].startswith("failed: FileNotFoundError")
    assert (victim / "keep.txt").read_text() == "precious"


def test_writing_into_home_is_contained():
    name = f".middo-probe-{uuid.uuid4().hex}"
    home = Path.home() / name  # this user's real home, whatever HOME the sandbox is given
    program = (
        "import os, posix\n"
        f"for path in (os.path.join(os.path.expanduser('~'), {name!r}), {str(home)!r}):\n"
        "    posix.close(posix.open(path, posix.O_WRONLY | posix.O_CREAT))\n"
    )
    try:
        res = humaneval.run_program(program)
        assert not home.exists()
        assert not res["passed"] and res["status"].startswith("failed: ")
    finally:
        home.unlink(missing_ok=True)


def test_writing_into_the_project_checkout_is_contained():
    probe = ROOT / f"middo-probe-{uuid.uuid4().hex}"
    program = f"import posix\nposix.close(posix.open({str(probe)!r}, posix.O_WRONLY | posix.O_CREAT))\n"
    try:
        res = humaneval.run_program(program)
        assert not probe.exists()
        assert not res["passed"] and res["status"].startswith("failed: ")
    finally:
        probe.unlink(missing_ok=True)


def test_a_tcp_connection_to_localhost_is_refused(listener):
    port, accepted = listener
    res = humaneval.run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    assert not res["passed"] and "ConnectionRefusedError" in res["status"]
    time.sleep(0.5)  # a connection that got through would be accepted by now
    assert accepted == []


def _sandbox_processes() -> list[str]:
    """PIDs of processes running a sandbox launcher (they read their program from stdin)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_source = sys.stdin.read()" in cmdline and b"posix.fork" not in cmdline:
            found.append(pid)
    return found


def test_an_unbounded_fork_bomb_is_capped_and_killed():
    """Every process forks forever through libc (the guard cannot stop ctypes); the kernel's cap holds it at a few
    processes, the timeout kills the whole pid namespace, and this machine can start processes meanwhile."""
    bomb = "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n"
    timeout = 4.0
    before = set(_sandbox_processes())
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        running = pool.submit(humaneval.run_program, bomb, timeout)
        time.sleep(1.0)
        probe_start = time.perf_counter()
        subprocess.run(["true"], check=True, timeout=10)  # fork + exec on the host still work, promptly
        assert time.perf_counter() - probe_start < 5.0  # generous: other jobs share this CPU
        res = running.result(timeout=timeout + 10)  # a sandbox that outlived bwrap would hold its pipe open
    assert time.perf_counter() - start < timeout + 5
    assert not res["passed"] and res["status"] == "timed out"
    deadline = time.time() + 5
    while set(_sandbox_processes()) - before and time.time() < deadline:
        time.sleep(0.1)
    assert not set(_sandbox_processes()) - before  # nothing of the bomb outlived its sandbox


def test_the_process_cap_stops_forking_with_a_reason():
    """Forking 50 short sleepers (harmless unsandboxed) fails at the cap instead of succeeding."""
    program = (
        "import posix, time\nfor i in range(50):\n    if posix.fork() == 0:\n        time.sleep(1); posix._exit(0)\n"
    )
    res = humaneval.run_program(program, timeout=10)
    assert not res["passed"] and "BlockingIOError" in res["status"]


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "sandbox-only"])
def test_the_issue_program_through_the_suite_path(listener, guard):
    """The report's program, verbatim but for the port (the test's own listener instead of sshd's 22). With the
    guard on, its first call is refused; without it, the sandbox alone must contain all three lines."""
    port, accepted = listener
    program = f"""import os, shutil, socket, tempfile
shutil.rmtree(os.path.join(tempfile.gettempdir(), "victim"))  # a folder outside its scratch dir: deleted
open(os.path.expanduser("~") + "/.probe", "w").write("x")      # a file in the user's home: written
socket.socket().connect(("127.0.0.1", {port}))                     # the network: reachable
"""
    victim = Path(tempfile.gettempdir()) / "victim"
    made = not victim.exists()
    victim.mkdir(exist_ok=True)
    (victim / f"keep-{uuid.uuid4().hex}").write_text("x")
    contents = sorted(victim.iterdir())
    home_probe = Path.home() / ".probe"
    had_probe = home_probe.exists()
    try:
        res = humaneval.run_program(program, guard=guard)
        assert not res["passed"] and res["status"].startswith("failed: ")
        assert sorted(victim.iterdir()) == contents
        assert home_probe.exists() == had_probe
        time.sleep(0.5)
        assert accepted == []
    finally:
        for path in contents:
            path.unlink(missing_ok=True)
        if made:
            victim.rmdir()
        if not had_probe:
            home_probe.unlink(missing_ok=True)


def test_the_guard_disables_destructive_calls(victim):
    res = humaneval.run_program(f"import shutil\nshutil.rmtree({str(victim)!r})\n", sandbox="none")
    assert not res["passed"] and "shutil.rmtree is disabled" in res["status"]
    assert (victim / "keep.txt").exists()


def test_scratch_home_and_tmp_are_private_and_writable():
    # The only host names allowed in the private /tmp: the read-only mount point of an interpreter that lives under
    # /tmp (a CI clone in /tmp/...), which the sandbox must show or Python cannot start.
    python_mounts = sorted({r.split("/")[2] for r in sandbox._python_roots() if r.startswith("/tmp/")})
    program = (
        "import os, tempfile\n"
        "assert os.path.expanduser('~') == tempfile.gettempdir() == os.getcwd() == '/tmp'\n"
        "open('/tmp/scratch.txt', 'w').write('ok')\n"
        f"assert sorted(os.listdir('/tmp')) == sorted(['scratch.txt', *{python_mounts!r}]), os.listdir('/tmp')\n"
    )
    assert humaneval.run_program(program)["passed"]


# --- no sandbox on this machine --------------------------------------------------------------------------------------


def test_missing_bwrap_is_refused_with_the_param_and_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH with no bwrap on it
    with pytest.raises(sandbox.SandboxUnavailable) as err:
        humaneval.run_program("open('/tmp/x', 'w')\n")
    assert "eval.humaneval.sandbox" in str(err.value) and "apt-get install bubblewrap" in str(err.value)
    with pytest.raises(sandbox.SandboxUnavailable):  # the suite refuses before a model is loaded
        check_suites(["gsm8k", "humaneval"], {"humaneval": {"sandbox": "required"}})
    with pytest.raises(sandbox.SandboxUnavailable):  # and score, before it generates (no model is needed to refuse)
        humaneval.score(None, humaneval.load(2, 0))


def test_a_bwrap_that_cannot_build_namespaces_is_refused_with_its_reason(tmp_path, monkeypatch):
    """Some containers forbid user namespaces: bwrap is there but fails; its own message reaches the user."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(
        sandbox.SandboxUnavailable, match=r"(?s)cannot build its sandbox.*No permissions.*sandbox: none"
    ):
        humaneval.run_program("pass\n")


def test_the_param_is_validated_with_its_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("eval:\n  humaneval:\n    sandbox: maybe\n")
    with pytest.raises(ConfigError, match="eval.humaneval.sandbox"):
        load_params(path)
    assert load_params(ROOT / "params.yaml").eval.humaneval.sandbox == "required"


def test_sandbox_none_runs_unsandboxed_and_warns_on_every_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
            check_suites(["humaneval"], {"humaneval": {"sandbox": "none"}})
        assert any("eval.humaneval.sandbox: none" in r.getMessage() for r in caplog.records)
    assert humaneval.run_program("import sys\nsys.exit(0)\n", sandbox="none")["passed"]


# --- correct code still passes ---------------------------------------------------------------------------------------


def test_every_canonical_solution_passes_inside_the_sandbox():
    problems = humaneval.load(None, 0)
    assert len(problems) == 164
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda p: humaneval.grade(p["canonical_solution"], p), problems))
    failed = {r["id"]: r["status"] for r in results if not r["correct"]}
    assert failed == {}
