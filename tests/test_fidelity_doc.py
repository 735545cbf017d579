"""docs/fidelity.md's "pinned by" cells name tests that exist: a renamed or deleted test must not leave a row that
claims a pin it no longer has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"`((?:tests/[\w/.-]+)?)(?:::(\w+))?`")


def _pins(cell: str) -> list[tuple[str, str | None]]:
    """``(file or folder, test name or None)`` for each test reference in a cell; ``::name`` continues the file
    named before it."""
    pins, current = [], None
    for path, name in REF.findall(cell):
        if path:
            current = path
        elif not name:
            continue
        if current:
            pins.append((current, name or None))
    return pins


def test_every_pinned_by_cell_names_tests_that_exist():
    rows = [line for line in (ROOT / "docs/fidelity.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert header[-1] == "pinned by"
    checked = 0
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
        if len(cells) != len(header):
            continue  # another table further down (the m table)
        pins = _pins(cells[-1])
        assert pins, f"docs/fidelity.md row {cells[0]!r} names no test"
        for path, name in pins:
            target = ROOT / path
            assert target.exists(), f"row {cells[0]!r}: {path} does not exist"
            if name:
                assert re.search(rf"^\s*def {name}\(", target.read_text(), re.M), f"row {cells[0]!r}: {path}::{name}"
            checked += 1
    assert checked >= 30
