"""middo exp's reading of `dvc exp show --json` where DVC could not load something (the real table: see
tests/pipeline/test_experiment_table.py)."""

import pytest

from middo.errors import MiddoError
from middo.exp_table import render, table_rows


def _row(rev, metrics, **extra):
    return {"rev": rev, "name": extra.pop("name", None), "data": {"params": {}, "metrics": metrics}, **extra}


def test_a_metrics_file_dvc_could_not_load_is_named_not_shown_as_a_dash():
    broken = {"metrics/round_1/eval.json": {"error": {"type": "YAMLFileCorruptedError", "msg": "bad"}}}
    with pytest.raises(MiddoError, match=r"workspace: metrics/round_1/eval\.json could not be read"):
        table_rows([_row("workspace", broken)])


def test_a_row_without_round_metrics_is_one_line_of_dashes_and_other_metrics_files_are_ignored():
    rows = table_rows([_row("abc1234def", {"reports/summary.json": {"data": {"x": 1}}}, name="main")])
    assert rows == [("main", "-", "-", "-", "-", "-", "-", "-", "")]
    assert render(rows).splitlines()[2].split() == ["main", *"-" * 7]
