"""What every ``stages/*.py`` script shares: an argument parser with ``--params``, the torchrun relaunch, and the
exit contract (a :class:`~middo.errors.MiddoError` prints one clear line and exits 2, so DVC never records the stage
as done).

Each stage's glue lives in its own script, not in a shared CLI module, so the code a stage runs is exactly its
script's import graph: ``tests/test_pipeline_files.py`` derives that graph and holds ``dvc.yaml``'s deps to it.
"""

from __future__ import annotations

import argparse
import os
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


def relaunched_under_torchrun(processes: int) -> bool:
    """Re-run this very script under torchrun with ``processes`` workers; False when already inside one (or 1).

    This is what ``base.processes`` does: the stage command in dvc.yaml stays the same on one CPU or eight GPUs.

    Raises:
        MiddoError: a worker failed (its traceback is in the log above).
    """
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return False
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    code = subprocess.call([*launcher, sys.argv[0], *sys.argv[1:]])
    if code != 0:
        raise MiddoError(f"torchrun with {processes} processes exited with status {code} (see the log above)")
    return True


def run(name: str, main: Callable[[], object]) -> int:
    """Call ``main``; a MiddoError becomes ``<name>: error: ...`` on stderr and exit status 2 (no traceback)."""
    try:
        main()
    except MiddoError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun, leave the process group cleanly (torch warns at exit otherwise).

    Only where a command already imported torch.distributed: light commands must not pay for importing torch.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
