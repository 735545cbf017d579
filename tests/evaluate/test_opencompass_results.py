"""Reading what OpenCompass wrote (:mod:`middo.evaluate.opencompass_results`): a real 0.5.4 run folder and summary
CSVs become eval.json and its per-item details."""

import json
import shutil
from pathlib import Path

import pytest

from middo.errors import MiddoError
from middo.evaluate.opencompass_results import convert_results, convert_summary, main, read_items
from middo.evaluate.stats import wilson
from middo.evaluate.suite import details_path

# a real OpenCompass 0.5.4 run folder, trimmed: see tests/assets/opencompass/README.md
RUN = Path(__file__).resolve().parents[1] / "assets" / "opencompass" / "run"
MODEL = "middo_round_1"

SUMMARY = """dataset,version,metric,mode,round_3
gsm8k,1d7fe4,accuracy,gen,25.50
hellaswag,809ef1,accuracy,ppl,40.00
openai_humaneval,8e312c,humaneval_pass@1,gen,12.20
IFEval,353ae7,Prompt-level-strict-accuracy,gen,20.00
IFEval,353ae7,Inst-level-strict-accuracy,gen,30.00
math-500,6a2c1b,accuracy,gen,-
"""


# ---- reading what it wrote ----


def test_converts_a_real_run_folder(tmp_path):
    out = tmp_path / "metrics" / "eval.json"
    metrics = convert_results(RUN, out, seed=7, bootstrap=200)
    assert json.loads(out.read_text()) == metrics
    # MMLU: college_biology 3/3 and college_chemistry 2/3 (AccEvaluator: prediction == reference), one suite
    assert metrics["accuracy"] == pytest.approx({"mmlu": 5 / 6, "ifeval": 0.0, "gsm8k": 0.0, "hellaswag": 1 / 3})
    assert list(metrics["accuracy"]) == ["mmlu", "ifeval", "gsm8k", "hellaswag"]  # the paper's order
    assert metrics["n"] == {"mmlu": 6, "ifeval": 3, "gsm8k": 3, "hellaswag": 3}
    assert metrics["average"] == pytest.approx((5 / 6 + 1 / 3) / 4)
    low, high = wilson(5, 6)
    assert metrics["interval"]["mmlu"] == {"low": round(low, 4), "high": round(high, 4)}
    assert metrics["interval"]["hellaswag"]["low"] == round(wilson(1, 3)[0], 4)
    assert 0 <= metrics["interval"]["average"]["low"] <= metrics["average"] <= metrics["interval"]["average"]["high"]
    assert metrics["metric"]["ifeval"] == "Prompt-level-strict-accuracy"
    assert metrics["opencompass_summary"]["mmlu"] == pytest.approx((1.0 + 2 / 3) / 2)  # its `mmlu` row: subject mean
    assert metrics["backend"] == "opencompass" and metrics["env"]["device"] == "see opencompass"
    # hellaswag was scored without --dump-eval-details: its score over its 3 predictions, and a note says so
    assert list(metrics["notes"]) == ["hellaswag"] and "no per-item results" in metrics["notes"]["hellaswag"]
    rows = [json.loads(line) for line in details_path(out).read_text().splitlines()]
    assert [(r["suite"], r["id"], r["correct"]) for r in rows[:4]] == [
        ("mmlu", "lukaemon_mmlu_college_biology/0", True),
        ("mmlu", "lukaemon_mmlu_college_biology/1", True),
        ("mmlu", "lukaemon_mmlu_college_biology/2", True),
        ("mmlu", "lukaemon_mmlu_college_chemistry/0", True),
    ]
    assert len(rows) == 12 and {r["suite"] for r in rows} == {"mmlu", "ifeval", "gsm8k"}
    gsm8k = [r for r in rows if r["suite"] == "gsm8k"]
    first = {"suite": "gsm8k", "id": "gsm8k/0", "correct": False, "dataset": "gsm8k", "pred": "14", "answer": "5"}
    assert gsm8k[0] == first
    assert [r["grade"] for r in rows if r["suite"] == "ifeval"] == ["none"] * 3


def _copy_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    return run


def test_mmlu_is_pooled_over_items_not_averaged_over_subjects(tmp_path):
    run = _copy_run(tmp_path)
    # a third subject of one item, in format_details' form (see the chemistry file beside it)
    one = {"accuracy": 0.0, "details": {"type": "GEN", "0": {"predictions": "B", "references": "C"}}}
    (run / "results" / MODEL / "lukaemon_mmlu_anatomy.json").write_text(json.dumps(one))
    metrics = convert_results(run, tmp_path / "eval.json", seed=7, bootstrap=200)
    assert metrics["accuracy"]["mmlu"] == pytest.approx(5 / 7) and metrics["n"]["mmlu"] == 7
    assert metrics["opencompass_summary"]["mmlu"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_a_dataset_without_a_score_or_with_an_error_fails_the_conversion(tmp_path):
    run = _copy_run(tmp_path)
    (run / "results" / MODEL / "gsm8k.json").unlink()  # its task failed: OpenCompass carries on, exit code 0
    summary = next((run / "summary").glob("*.csv"))
    # DefaultSummarizer._format_table's row for a dataset with no results
    summary.write_text(summary.read_text().replace("gsm8k,1d7fe4,accuracy,gen,0.00", "gsm8k,-,-,-,-"))
    (run / "results" / MODEL / "IFEval.json").write_text(
        json.dumps({"error": "preds and refrs have different length"})
    )
    with pytest.raises(MiddoError) as err:
        convert_results(run, tmp_path / "eval.json", seed=7, bootstrap=200)
    assert "gsm8k: no score" in str(err.value) and "preds and refrs have different length" in str(err.value)
    assert not (tmp_path / "eval.json").exists()


def test_cli_converts_a_run_folder(tmp_path, capsys):
    main([str(RUN), str(tmp_path / "eval.json"), "--seed", "3", "--bootstrap", "100"])
    assert json.loads(capsys.readouterr().out)["n"]["mmlu"] == 6
    assert details_path(tmp_path / "eval.json").is_file()


def test_old_format_details_and_replicas(tmp_path):
    # OpenCompass 0.3.x, OpenICLEvalTask.format_details: {"type": ..., "0": {..., "correct": bool}}
    old = {"type": "GEN", "1": {"predictions": "2", "references": "3", "correct": False}, "0": {"correct": True}}
    assert [(i["id"], i["correct"]) for i in read_items(old, "gsm8k")] == [("gsm8k/0", True), ("gsm8k/1", False)]
    # IFEvaluator's own dict when format_details could not run: "is_correct"
    assert read_items({"0": {"is_correct": True, "grade": "strict"}}, "IFEval")[0]["grade"] == "strict"
    # a GEN dump with no result and no exact-match evaluator: nothing per item
    assert read_items({"type": "GEN", "0": {"predictions": "A", "references": "A"}}, "gsm8k") is None
    replicated = [{"example_abbr": "gsm8k_test_4", "correct": [True, False]}]
    with pytest.raises(MiddoError, match="2 replicas per item"):
        read_items(replicated, "gsm8k")


# ---- convert_summary (the summary CSV alone) ----


@pytest.fixture
def summary(tmp_path):
    path = tmp_path / "summary_20250101_000000.csv"
    path.write_text(SUMMARY)
    return path


def test_converts_to_the_metrics_shape(summary, tmp_path):
    out = tmp_path / "metrics" / "eval.json"
    suite_map = {"gsm8k": "gsm8k", "hellaswag": "hellaswag", "humaneval": "openai_humaneval"}
    metrics = convert_summary(summary, out, suite_map)
    assert json.loads(out.read_text()) == metrics
    assert metrics["accuracy"] == pytest.approx({"gsm8k": 0.255, "hellaswag": 0.40, "humaneval": 0.122})
    assert metrics["average"] == pytest.approx((0.255 + 0.40 + 0.122) / 3)
    assert metrics["n"] == {"gsm8k": None, "hellaswag": None, "humaneval": None}


def test_dataset_with_several_metrics_needs_one_named(summary, tmp_path):
    with pytest.raises(MiddoError, match="dataset:metric"):
        convert_summary(summary, tmp_path / "a.json", {"ifbench": "IFEval"})
    m = convert_summary(summary, tmp_path / "b.json", {"ifbench": "IFEval:Prompt-level-strict-accuracy"})
    assert m["accuracy"]["ifbench"] == pytest.approx(0.20)


def test_default_map_reports_every_problem(summary, tmp_path):
    with pytest.raises(MiddoError, match=r":7: suite 'math500': score '-' is not a number"):
        convert_summary(summary, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


def test_several_models_need_one_picked_and_cli(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("dataset,version,metric,mode,round_1,round_2\ngsm8k,x,accuracy,gen,10,20\n")
    with pytest.raises(MiddoError, match="2 model columns"):
        convert_summary(path, tmp_path / "o.json", {"gsm8k": "gsm8k"})
    main([str(path), str(tmp_path / "o.json"), "--model", "round_2", "--map", "gsm8k=gsm8k"])
    assert json.loads((tmp_path / "o.json").read_text())["accuracy"] == {"gsm8k": 0.2}


def test_rejects_a_file_that_is_not_a_summary(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MiddoError, match="not an OpenCompass summary"):
        convert_summary(path, tmp_path / "o.json", {"gsm8k": "gsm8k"})
