"""Atomic file writes: a reader sees either the old file or the complete new one, never half a file.

Every output of the pipeline goes through here, so that a crash or Ctrl-C mid-write cannot leave a truncated
dataset or metrics file that DVC would then hash and cache as if it were good.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from middo.errors import MiddoError

_MODES = ("w", "wt", "wb")


class WriteError(MiddoError, OSError):
    """Writing an output failed (disk full, quota, file size limit, ...); the previous output is untouched."""


# storage failures (as opposed to bugs such as a missing input, which keep their own error and traceback)
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def _is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno in _STORAGE_ERRNOS


def _write_failed(path: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or str(exc)
    return WriteError(
        f"could not write {path}: {reason} (errno {exc.errno}); the previous {path.name}, if any, is intact"
    )


# Read once at import (single-threaded then): mkstemp creates files 0600, and outputs should get the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on a clean exit fsync it and ``os.replace`` it onto ``path``.

    The temp file lives in the same directory so the final rename never crosses file systems (which would not be
    atomic). On any exception, KeyboardInterrupt included, the temp file is removed and ``path`` is untouched.
    Text mode writes ``\\n`` as is on every platform. Missing parent directories are created.

    Args:
        path: the file to write.
        mode: ``"w"`` / ``"wt"`` for text, ``"wb"`` for bytes.
        encoding: text encoding (ignored in binary mode).

    Raises:
        ValueError: ``mode`` is not a write mode this function supports (appending cannot be atomic).
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_open: mode {mode!r} not supported; expected one of {', '.join(_MODES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    text = "b" not in mode
    try:
        with os.fdopen(fd, mode, encoding=encoding if text else None, newline="" if text else None) as f:
            os.chmod(tmp, _final_mode(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _is_storage_error(exc):
            raise _write_failed(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def _final_mode(path: Path) -> int:
    """Keep the mode of the file being replaced; a new file gets the mode ``open()`` would have given it."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; directories cannot be opened for fsync on Windows, so skip it there."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh folder beside ``path``; on a clean exit it replaces ``path`` in one rename.

    For checkpoints and model folders: a stage killed mid-save leaves the old folder (or none), never half a model
    that a later stage would load. On any exception the temp folder is removed and ``path`` is untouched.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = tmp / "out"
        yield target
        if path.exists():
            shutil.rmtree(path)
        target.replace(path)
    except OSError as exc:
        if _is_storage_error(exc):
            raise _write_failed(path, exc) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
