"""Atomic writes: the target is either the old file or the whole new one, and no temp file is left behind."""

from __future__ import annotations

import os
import stat

import pytest

from middo.dataio.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_write_and_replace(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "one\n")
    assert path.read_text() == "one\n"
    atomic_write_text(path, "two\r\nthree\n")
    assert path.read_bytes() == b"two\r\nthree\n"  # text is written as is, no newline translation
    atomic_write_bytes(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert os.listdir(path.parent) == ["out.txt"]


def test_writer_raising_midway_keeps_old_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("old content\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path) as f:
            f.write("new partial line 1\n")
            f.flush()
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["data.jsonl"]


def test_interrupt_leaves_no_file_when_there_was_none(tmp_path):
    path = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "wb") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_modes(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o600)
    atomic_write_text(path, "y")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a replaced file keeps its mode
    with pytest.raises(ValueError, match="mode 'a' not supported"):
        with atomic_open(path, "a"):
            pass
    assert path.read_text() == "y"
