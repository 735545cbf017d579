import json

import pytest

from middo.errors import MiddoError
from middo.summarize import summarize


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_rows_and_plots(tmp_path):
    m = tmp_path / "metrics"
    _write(m / "round_0/eval.json", {"accuracy": {"gsm8k": 0.1, "hellaswag": 0.3}, "average": 0.2})
    _write(m / "round_0/import.json", {"import": {"kept": 64}})
    _write(m / "round_1/eval.json", {"accuracy": {"gsm8k": 0.2, "hellaswag": 0.4}, "average": 0.3})
    _write(m / "round_1/diagnose.json", {"diagnose": {"flagged": {"complexity": 3, "diversity": 2, "quality": 5}}})
    _write(m / "round_1/refine.json", {"refine": {"size_after": 66, "removed": 8, "added": 2}})
    _write(m / "round_7/eval.json", {"accuracy": {"gsm8k": 0.9}, "average": 0.9})  # stale, not in params
    s = summarize(m, [0, 1], tmp_path / "reports/summary.json", tmp_path / "reports/plots")
    assert [r["round"] for r in s["rounds"]] == [0, 1]
    assert [r["dataset_size"] for r in s["rounds"]] == [64, 66]
    acc = json.loads((tmp_path / "reports/plots/accuracy.json").read_text())
    assert {"round": 1, "suite": "average", "accuracy": 0.3} in acc
    assert len(acc) == 6
    flags = json.loads((tmp_path / "reports/plots/flags.json").read_text())
    assert {"round": 1, "axis": "quality", "flagged": 5} in flags
    assert (tmp_path / "reports/plots/accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_round_is_an_error(tmp_path):
    with pytest.raises(MiddoError, match="round_3/eval.json: missing"):
        summarize(tmp_path, [3], tmp_path / "s.json", tmp_path / "p")
