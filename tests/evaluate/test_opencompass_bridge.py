import json
import shutil
import sys
from pathlib import Path

import pytest

from middo.config import PAPER_OPENCOMPASS_DATASETS, OpenCompassConfig
from middo.errors import MiddoError
from middo.evaluate.opencompass_bridge import (
    PAPER_CONFIGS,
    check_config,
    check_python,
    check_tokenizer,
    convert_results,
    convert_summary,
    evaluate_opencompass,
    main,
    read_items,
    render_config,
    resolve_datasets,
    stream,
)
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


# ---- the config OpenCompass runs ----


def _config(limit=0, backend="vllm", model="models/round_3"):
    datasets = resolve_datasets(PAPER_OPENCOMPASS_DATASETS)
    return render_config(model, "middo_round_3", datasets, backend, 4096, 16, 2, limit)


def test_config_imports_the_eight_paper_datasets_and_the_paper_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _config()
    compile(text, "opencompass_config.py", "exec")
    for name, (folder, variable) in PAPER_CONFIGS.items():
        assert f"from opencompass.configs.datasets.{folder}.{name} import {variable} as {name}\n" in text
    assert set(PAPER_CONFIGS) == set(PAPER_OPENCOMPASS_DATASETS)
    assert "type=VLLMwithChatTemplate," in text and "from opencompass.models import VLLMwithChatTemplate" in text
    assert f"path={str(tmp_path / 'models' / 'round_3')!r}," in text  # absolute: OpenCompass runs elsewhere
    assert "abbr='middo_round_3'," in text
    assert "max_out_len=4096," in text and "batch_size=16," in text
    assert "generation_kwargs=dict(temperature=0)," in text
    assert "model_kwargs=dict(tensor_parallel_size=2)," in text and "run_cfg=dict(num_gpus=2)," in text
    assert "summarizer = dict(summary_groups=mmlu_summary_groups)" in text
    assert "test_range" not in text  # limit 0: every item


def test_config_limit_slices_every_dataset_and_hf_backend_is_greedy():
    text = _config(limit=5, backend="hf")
    compile(text, "opencompass_config.py", "exec")
    assert "for _dataset in datasets:\n    _dataset['reader_cfg']['test_range'] = '[0:5]'\n" in text
    assert "type=HuggingFacewithChatTemplate," in text and "generation_kwargs=dict(do_sample=False)," in text
    assert "tensor_parallel_size" not in text and "run_cfg=dict(num_gpus=2)," in text


def test_datasets_resolve_in_the_users_opencompass(tmp_path):
    configs = tmp_path / "opencompass" / "configs" / "datasets"
    (configs / "gsm8k").mkdir(parents=True)
    (configs / "gsm8k" / "gsm8k_gen_1d7fe4.py").write_text("gsm8k_datasets = []\n")
    (configs / "ARC_c").mkdir()
    # the form of OpenCompass's short configs (configs/datasets/gsm8k/gsm8k_gen.py): a read_base import
    (configs / "ARC_c" / "ARC_c_gen.py").write_text(
        "from mmengine.config import read_base\nwith read_base():\n    from .ARC_c_gen_1e0de5 import ARC_c_datasets\n"
    )
    found = resolve_datasets(["gsm8k_gen_1d7fe4", "ARC_c_gen"], configs)
    assert [(d.module, d.variables) for d in found] == [
        ("opencompass.configs.datasets.gsm8k.gsm8k_gen_1d7fe4", ("gsm8k_datasets",)),
        ("opencompass.configs.datasets.ARC_c.ARC_c_gen", ("ARC_c_datasets",)),
    ]
    with pytest.raises(MiddoError) as err:
        resolve_datasets(["math_gen_265cce", "nope_gen"], configs)
    assert "'math_gen_265cce' is not in your OpenCompass" in str(err.value)
    assert "'nope_gen' matches 0 configs" in str(err.value)  # both problems in one error
    with pytest.raises(MiddoError, match="not one of the paper's eight"):
        resolve_datasets(["ARC_c_gen"])
    with pytest.raises(MiddoError, match="eval.opencompass.datasets: empty"):
        resolve_datasets([], configs)


# ---- running it in the user's env ----


def _evaluate(tmp_path, config):
    return evaluate_opencompass(
        model_path=tmp_path, limit=0, out_path=tmp_path / "eval.json", seed=1, bootstrap=100, config=config, round_=1
    )


def test_python_unset_or_missing_names_the_param(tmp_path):
    with pytest.raises(MiddoError, match="eval.opencompass.python: not set"):
        check_python("")
    missing = tmp_path / "oc-env" / "bin" / "python"
    with pytest.raises(MiddoError, match=r"eval.opencompass.python: .*oc-env/bin/python does not exist"):
        _evaluate(tmp_path, OpenCompassConfig(python=str(missing)))


def test_a_python_without_opencompass_says_how_to_install_it(tmp_path):
    # this project's own env: it never has opencompass (it would downgrade numpy)
    with pytest.raises(MiddoError) as err:
        _evaluate(tmp_path, OpenCompassConfig(python=sys.executable))
    message = str(err.value)
    assert message.startswith(f"eval.opencompass.python: {sys.executable} cannot import opencompass")
    assert "No module named 'opencompass'" in message and "-m pip install opencompass" in message
    assert not (tmp_path / "eval.json").exists()


def test_a_transformers_5_tokenizer_fails_early_in_a_transformers_4_env(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))  # as transformers 5 saves it
    with pytest.raises(MiddoError, match="tokenizer_class 'TokenizersBackend'.* transformers 4.57.6 of your"):
        check_tokenizer(tmp_path, "4.57.6")
    check_tokenizer(tmp_path, "5.2.0")
    config.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))  # both load this one
    check_tokenizer(tmp_path, "4.57.6")


def test_a_config_transformers_4_would_misread_fails_early_naming_the_keys(tmp_path):
    from transformers import LlamaConfig

    from middo.checkpoint_config import make_config_portable

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    scaling["original_max_position_embeddings"] = 8192
    llama31 = LlamaConfig(hidden_size=16, num_attention_heads=2, rope_theta=5e5, rope_scaling=scaling)
    llama31.save_pretrained(tmp_path)  # transformers 5 writes rope_parameters only
    with pytest.raises(MiddoError) as err:
        check_config(tmp_path, "4.57.6")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: the transformers 4.57.6 of your OpenCompass env")
    assert "rope_theta: transformers 4 reads 10000.0 (absent, so its default), rope_parameters say 500000.0" in message
    assert "rope_scaling: transformers 4 reads null" in message and "-m middo.checkpoint_config" in message
    check_config(tmp_path, "5.2.0")  # transformers 5 reads rope_parameters
    assert make_config_portable(tmp_path)
    check_config(tmp_path, "4.57.6")


def test_a_failing_command_raises_with_its_last_lines(tmp_path, capsys):
    script = "import sys\nfor i in range(60): print('line', i)\nsys.exit(3)"
    with pytest.raises(MiddoError) as err:
        stream([sys.executable, "-c", script], cwd=tmp_path)
    message = str(err.value)
    assert "exited with 3" in message and message.endswith("line 59")
    assert "line 19" not in message  # only the tail
    assert "line 0\n" in capsys.readouterr().out  # the output was streamed as it came


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
