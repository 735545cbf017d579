"""What every ``stages/*.py`` script shares: an argument parser with ``--params``, the torchrun relaunch, and the
exit contract (a :class:`~middo.errors.MiddoError` prints one clear line and exits 2, so DVC never records the stage
as done).

Each stage's glue lives in its own script, not in a shared CLI module, so the code a stage runs is exactly its
script's import graph: ``tests/test_pipeline_files.py`` derives that graph and holds ``dvc.yaml``'s deps to it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

from middo.errors import MiddoError


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the stage's docstring, with the shared ``--params`` option."""
    first = doc.strip().splitlines()[0].replace("``", "") if doc else None  # --help is plain text, not reST
    ap = argparse.ArgumentParser(description=first)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def process_count(processes: int | str, device: str = "auto") -> int:
    """``base.processes`` as a number: ``auto`` is one process per GPU this process sees (``CUDA_VISIBLE_DEVICES``
    applies), and one where there is none or ``base.device`` is ``cpu``."""
    if processes != "auto":
        return int(processes)
    if device == "cpu":
        return 1
    import torch  # only here: the light stages must not pay for importing torch

    return max(1, torch.cuda.device_count())


LAUNCHER_ENV = "MIDDO_LAUNCHER"  # a multi-node launcher command line (the README's cluster section)


def relaunched_under_torchrun(processes: int | str, device: str = "auto") -> bool:
    """Re-run this very script under torchrun with ``processes`` workers; False when already inside one (or 1).

    This is what ``base.processes`` does: the stage command in dvc.yaml stays the same on one CPU or eight GPUs.
    A launch from outside (``torchrun``, ``srun torchrun``: ``WORLD_SIZE`` is set) is honoured as it is, whatever
    ``base.processes`` says. ``MIDDO_LAUNCHER`` replaces the one-machine launcher with a command line that starts
    the job across nodes (``srun ... torchrun --nnodes ...``, the README's cluster section), so that ``dvc repro``
    on one node runs each stage on all of them.

    Args:
        processes: ``base.processes`` (a count, or ``auto``: see :func:`process_count`).
        device: ``base.device``.

    Raises:
        MiddoError: a worker failed (its traceback is in the log above).
    """
    if "WORLD_SIZE" in os.environ:
        return False
    launcher = shlex.split(os.environ.get(LAUNCHER_ENV, ""))
    what = f"{LAUNCHER_ENV} ({' '.join(launcher[:1])})"
    if not launcher:
        processes = process_count(processes, device)
        if processes <= 1:
            return False
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        what = f"torchrun with {processes} processes"
    code = subprocess.call([*launcher, sys.argv[0], *sys.argv[1:]])
    if code != 0:
        raise MiddoError(f"{what} exited with status {code} (see the log above)")
    return True


def run(name: str, main: Callable[[], object], *, fast_exit: bool = False) -> int:
    """Call ``main``; a MiddoError becomes ``<name>: error: ...`` on stderr and exit status 2 (no traceback).

    Args:
        name: the stage, for the error line.
        main: the stage's work.
        fast_exit: end the process here once ``main`` is done (:func:`exit_now`). The stage scripts ask for it;
            in-process callers leave it off and get the exit status back.
    """
    try:
        main()
        code = 0
    except MiddoError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        code = 2
    finally:
        _leave_process_group()
    if fast_exit:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process with ``code`` without tearing down every imported module one by one.

    A stage imports thousands of modules (torch, transformers, TRL); the interpreter's teardown of them takes ~1.2 s
    on the 2-core box, paid by each of the demo's stages (docs/benchmarks.md). The outputs are already written
    (atomically) when this runs; what normal exit would still do is done first: the ``atexit`` handlers (temporary
    directories, logging) run and the streams are flushed. Where a non-daemon thread is still alive, or outside
    CPython, nothing is skipped: this returns and the process exits normally, waiting for it.
    """
    import atexit
    import threading

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    main = threading.main_thread()
    if run_exitfuncs is None or any(t is not main and not t.daemon for t in threading.enumerate()):
        return
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written to it anyway
            pass
    os._exit(code)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group cleanly (torch warns at exit otherwise).

    Only where a command already imported torch.distributed: light commands must not pay for importing torch.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
