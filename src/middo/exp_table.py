"""The experiment table in long form: one line per experiment and round, with the numbers Middo's loop is read by.

``dvc exp show`` makes a column of every leaf of every metrics file, every param and every file dependency: on the
demo 368 columns, 17,000 characters wide. That is DVC's design (it has no setting for the default columns), and the
pipeline declares every param and module on purpose. ``--drop/--keep`` narrows the columns, but its headers are the
files' paths (``metrics/round_1/eval.json:average``), so even a few columns per round outgrow a terminal as rounds
accumulate. This view reads the same data (``dvc exp show --json``) and turns the rounds into rows: the
samples trained on, the flagged samples, the train loss, and the average accuracy with its 95% interval. Its width
does not grow with the number of rounds. The params an experiment changed are listed beside it, one a line.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from middo.errors import MiddoError
from middo.lockcheck import flatten

ROUND_FILE = re.compile(r"^metrics/round_(\d+)/([a-z_]+)\.json$")
# column: (the round's metrics file, the key path in it)
COLUMNS = {
    "samples": ("train", ("train", "samples")),
    "flagged": ("diagnose", ("diagnose", "flagged", "any")),
    "train loss": ("train", ("train", "train_loss")),
    "average": ("eval", ("average",)),
    "95% low": ("eval", ("interval", "average", "low")),
    "95% high": ("eval", ("interval", "average", "high")),
}
HEADER = ("experiment", "round", *COLUMNS, "params changed")


def _dig(tree, keys: Sequence[str]):
    for key in keys:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _params(data: Mapping) -> dict[str, object]:
    """Every param of a row, as ``file:key`` for files other than params.yaml (DVC's own naming)."""
    out: dict[str, object] = {}
    for path, entry in (data.get("params") or {}).items():
        prefix = "" if path == "params.yaml" else f"{path}:"
        out.update({prefix + k: v for k, v in flatten(entry.get("data") or {}).items()})
    return out


def _rows_of(exp_show: Sequence[Mapping]) -> Iterator[tuple[str, Mapping, Mapping | None]]:
    """(name, data, the data it is compared with) for each row of ``dvc exp show --json``, in its order: the workspace
    against the first commit, each commit against itself, each experiment against the commit it was run from."""
    commits = [row for row in exp_show if row.get("rev") != "workspace"]
    head = commits[0].get("data") if commits else None
    for row in exp_show:
        data = row.get("data") or {}
        if row.get("rev") == "workspace":
            yield "workspace", data, head
            continue
        yield row.get("name") or row["rev"][:7], data, None
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or rev["rev"][:7]
                yield f"{rev['rev'][:7]} [{name}]", rev.get("data") or {}, data


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


def table_rows(exp_show: Sequence[Mapping], problems: list[str] | None = None) -> list[tuple[str, ...]]:
    """The long-form rows (without the header) of a ``dvc exp show --json`` result.

    A metrics file DVC could not load shows ``!`` in its cells, as in DVC's own table, and ``problems`` (when given)
    gets a line naming the experiment, the file and DVC's error: one broken revision does not hide the others.
    """
    rows: list[tuple[str, ...]] = []
    for name, data, base in _rows_of(exp_show):
        files: dict[int, dict[str, Mapping | None]] = {}
        for path, entry in (data.get("metrics") or {}).items():
            match = ROUND_FILE.match(path)
            if not match:
                continue
            if entry.get("error"):
                if problems is not None:
                    problems.append(f"{name}: {path} could not be read: {entry['error']}")
                files.setdefault(int(match[1]), {})[match[2]] = None
                continue
            files.setdefault(int(match[1]), {})[match[2]] = entry.get("data") or {}
        changed: list[str] = []
        if base is not None:
            mine, theirs = _params(data), _params(base)
            names = sorted(set(mine) | set(theirs))
            changed = [f"{k}={json.dumps(mine.get(k))}" for k in names if mine.get(k) != theirs.get(k)]
        rounds = sorted(files) or [None]
        for i in range(max(len(rounds), len(changed))):  # a changed param per line, beside the rounds
            if i < len(rounds):
                r = rounds[i]
                cells = ["-" if r is None else str(r)]
                got = files.get(r, {})
                cells += [
                    "!" if f in got and got[f] is None else _format(_dig(got.get(f), keys))
                    for f, keys in COLUMNS.values()
                ]
            else:
                cells = [""] * (1 + len(COLUMNS))
            rows.append((name if i == 0 else "", *cells, changed[i] if i < len(changed) else ""))
    return rows


def render(rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """An aligned text table, or a Markdown one."""
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    numeric = set(range(1, len(HEADER) - 1))

    def line(row) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells).rstrip()

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    out = [line(HEADER), rule if markdown else "  ".join("-" * w for w in widths), *map(line, rows)]
    return "\n".join(out) + "\n"


def dvc_exp_show(repo: str | Path = ".", extra: Sequence[str] = ()) -> list[dict]:
    """``dvc exp show --json`` of ``repo`` (``extra``: more of its options, e.g. ``-A`` or ``-n 3``).

    Raises:
        MiddoError: when DVC fails, with its message.
    """
    cmd = ["dvc", "exp", "show", "--json", *extra]
    try:
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise MiddoError("middo exp: the dvc command is not on PATH (activate the project's venv)") from e
    if done.returncode != 0:
        raise MiddoError(f"{' '.join(cmd)} failed in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)
