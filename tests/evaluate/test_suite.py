import json

import pytest
import torch

from middo.errors import MiddoError
from middo.evaluate import SUITES, evaluate_model
from middo.evaluate.generation import batch_choice_loglik, chat_ids, choice_loglik
from middo.evaluate.items import select_items, summarize
from middo.evaluate.suite import details_path
from middo.provenance import PACKAGES


def test_suite_table_names():
    assert list(SUITES) == ["humaneval", "math500", "ifbench", "gsm8k", "hellaswag", "truthfulqa"]


def test_unknown_suite_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(MiddoError, match="unknown suite.*'mmlu'.*known suites: humaneval, math500"):
        evaluate_model(tmp_path / "no-model", ["gsm8k", "mmlu"], 2, tmp_path / "eval.json", "cpu", "float32", 8, 42)


def test_selection_is_seeded_and_stable():
    items = list(range(50))
    assert select_items(items, 5, 1) == select_items(items, 5, 1)
    assert select_items(items, 5, 1) != select_items(items, 5, 2)
    assert select_items(items, 10, 1)[:5] == select_items(items, 5, 1)  # a larger limit extends the subset
    assert sorted(select_items(items, 0, 1)) == items
    assert summarize([{"correct": True}, {"correct": False}])["accuracy"] == 0.5


@pytest.mark.slow
def test_choice_loglik_matches_full_forward(scoring_model, one_torch_thread):
    lm = scoring_model
    context, choices = "What is the capital of France?", ["Paris.", "The capital is Berlin."]
    got = choice_loglik(lm, context, choices)
    for choice, value in zip(choices, got, strict=True):
        ctx = chat_ids(lm.tokenizer, context)
        cont = lm.tokenizer(choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(ids, use_cache=False).logits[0].float(), -1)
        expected = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert value == pytest.approx(expected, abs=1e-3)
    (scores,) = batch_choice_loglik(lm, [(context, choices)])
    assert scores.n_bytes == [6, 22] and scores.per_byte[0] == pytest.approx(got[0] / 6)
    assert got[0] > got[1]


@pytest.mark.slow
def test_evaluate_model_writes_flat_metrics(base_model_dir, tmp_path, one_torch_thread):
    out = tmp_path / "metrics" / "eval_round_0.json"
    result = evaluate_model(base_model_dir, ["hellaswag", "gsm8k"], 2, out, "cpu", "float32", 32, 42)
    metrics = json.loads(out.read_text())
    env = metrics.pop("env")
    assert set(env) == {"python", *PACKAGES, "device", "dtype"}
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
    assert set(metrics) == {"accuracy", "average", "n"}
    assert set(metrics["accuracy"]) == {"hellaswag", "gsm8k"} and metrics["n"] == {"hellaswag": 2, "gsm8k": 2}
    assert all(0.0 <= a <= 1.0 for a in metrics["accuracy"].values())
    assert metrics["average"] == pytest.approx(sum(metrics["accuracy"].values()) / 2)
    assert {k: result[k] for k in metrics} == metrics
    rows = [json.loads(line) for line in details_path(out).read_text().splitlines()]
    assert details_path(out).name == "eval_round_0_details.jsonl"
    assert [r["suite"] for r in rows] == ["hellaswag"] * 2 + ["gsm8k"] * 2
    assert all(isinstance(r["correct"], bool) for r in rows)
