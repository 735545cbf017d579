import json

import pytest

from middo.errors import MiddoError
from middo.evaluate.opencompass_bridge import convert_summary, main

SUMMARY = """dataset,version,metric,mode,round_3
gsm8k,1d7fe4,accuracy,gen,25.50
hellaswag,809ef1,accuracy,ppl,40.00
openai_humaneval,8e312c,humaneval_pass@1,gen,12.20
IFEval,353ae7,Prompt-level-strict-accuracy,gen,20.00
IFEval,353ae7,Inst-level-strict-accuracy,gen,30.00
math-500,6a2c1b,accuracy,gen,-
"""


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
