"""middo exp's reading of `dvc exp show --json` where DVC could not load something (the real table: see
tests/pipeline/test_experiment_table.py)."""

from middo.exp_table import render, table_rows


def _row(rev, metrics, **extra):
    return {"rev": rev, "name": extra.pop("name", None), "data": {"params": {}, "metrics": metrics}, **extra}


def test_a_metrics_file_dvc_could_not_load_shows_bangs_and_is_named_and_the_other_rows_stay():
    broken = {
        "metrics/round_1/eval.json": {"error": {"type": "YAMLFileCorruptedError", "msg": "bad"}},
        "metrics/round_1/train.json": {"data": {"train": {"samples": 32, "train_loss": 1.5}}},
    }
    fine = {"metrics/round_1/eval.json": {"data": {"average": 0.5}}}
    problems: list[str] = []
    rows = table_rows([_row("workspace", broken), _row("abc1234def", fine, name="main")], problems)
    # round, samples, flagged, train loss, average, 95% low, 95% high: the unreadable file's three cells are "!"
    assert rows == [
        ("workspace", "1", "32", "-", "1.5", "!", "!", "!", ""),
        ("main", "1", "-", "-", "-", "0.5", "-", "-", ""),
    ]
    assert problems == ["workspace: metrics/round_1/eval.json could not be read: {'type': 'YAMLFileCorruptedError', "
                        "'msg': 'bad'}"]  # fmt: skip


def test_a_row_without_round_metrics_is_one_line_of_dashes_and_other_metrics_files_are_ignored():
    rows = table_rows([_row("abc1234def", {"reports/summary.json": {"data": {"x": 1}}}, name="main")])
    assert rows == [("main", "-", "-", "-", "-", "-", "-", "-", "")]
    assert render(rows).splitlines()[2].split() == ["main", *"-" * 7]
