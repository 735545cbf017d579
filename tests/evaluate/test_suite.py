import json
from types import SimpleNamespace

import pytest
import torch

from middo.errors import MiddoError
from middo.evaluate.generation import batch_choice_loglik, chat_ids, choice_loglik
from middo.evaluate.items import select_items, summarize
from middo.evaluate.suite import SUITES, Suite, details_path, evaluate_model
from middo.provenance import PACKAGES


def test_suite_table_names():
    assert list(SUITES) == ["humaneval", "math500", "ifbench", "gsm8k", "hellaswag", "truthfulqa", "mmlu"]


def test_unknown_suite_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(MiddoError, match="unknown suite.*'nosuch'.*known suites: humaneval, math500"):
        evaluate_model(
            tmp_path / "no-model",
            ["gsm8k", "nosuch"],
            2,
            tmp_path / "eval.json",
            "cpu",
            "float32",
            8,
            42,
            bootstrap=100,
        )


def test_options_that_a_suite_does_not_take_are_refused_before_loading_anything(tmp_path):
    with pytest.raises(MiddoError, match=r"suite gsm8k: options \['mode'\] do not fit its score\(\)"):
        evaluate_model(
            tmp_path / "no-model",
            ["gsm8k"],
            2,
            tmp_path / "eval.json",
            "cpu",
            "float32",
            8,
            42,
            bootstrap=100,
            suite_options={"gsm8k": {"mode": "loglik"}},
        )


def _fake_suite(flags, seen=None):
    def load(limit, seed):
        return [{"id": f"q{i}"} for i in range(len(flags))]

    def score(lm, items, max_new_tokens=0, **options):
        if seen is not None:
            seen.update(options)
        return summarize([{"id": it["id"], "correct": bool(f)} for it, f in zip(items, flags, strict=True)])

    return Suite(load, score, "none")


def test_evaluate_model_writes_intervals_and_passes_suite_options(tmp_path, monkeypatch):
    # fake suites and no model: what is tested is the bookkeeping around the scores, in milliseconds
    seen_a, seen_b = {}, {}
    monkeypatch.setitem(SUITES, "fake_a", _fake_suite([1, 0, 1, 0], seen_a))
    monkeypatch.setitem(SUITES, "fake_b", _fake_suite([1] * 10, seen_b))
    lm = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    monkeypatch.setattr("middo.modeling.load_model", lambda *args, **kwargs: lm)
    out = tmp_path / "eval.json"
    options = {"fake_a": {"mode": "loglik"}, "mmlu": {"mode": "generate"}}  # mmlu is not run: its options are unused
    result = evaluate_model(
        tmp_path, ["fake_a", "fake_b"], 0, out, "cpu", "float32", 8, 42, bootstrap=300, suite_options=options
    )
    assert seen_a == {"mode": "loglik"} and seen_b == {}
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"accuracy", "average", "n", "interval"}
    assert metrics["interval"]["fake_a"] == {"low": 0.15, "high": 0.85}  # Wilson 2/4
    assert metrics["interval"]["fake_b"] == {"low": 0.7225, "high": 1.0}  # Wilson 10/10
    avg = metrics["interval"]["average"]
    assert avg["low"] <= metrics["average"] == 0.75 <= avg["high"]
    assert {k: result[k] for k in metrics} == metrics
    again = evaluate_model(
        tmp_path, ["fake_a", "fake_b"], 0, tmp_path / "b.json", "cpu", "float32", 8, 42, bootstrap=300
    )
    assert again["interval"] == metrics["interval"]  # seeded


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
    result = evaluate_model(base_model_dir, ["hellaswag", "gsm8k"], 2, out, "cpu", "float32", 32, 42, bootstrap=200)
    metrics = json.loads(out.read_text())
    env = json.loads((out.parent / "env" / out.name).read_text())  # provenance beside the metrics, not in them
    assert set(env) == {"python", *PACKAGES, "device", "dtype", "cpu"}
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
    assert set(metrics) == {"accuracy", "average", "n", "interval"}
    assert set(metrics["accuracy"]) == {"hellaswag", "gsm8k"} and metrics["n"] == {"hellaswag": 2, "gsm8k": 2}
    assert set(metrics["interval"]) == {"hellaswag", "gsm8k", "average"}
    for suite, bounds in metrics["interval"].items():
        value = metrics["average"] if suite == "average" else metrics["accuracy"][suite]
        assert bounds["low"] <= value <= bounds["high"]
    assert all(0.0 <= a <= 1.0 for a in metrics["accuracy"].values())
    assert metrics["average"] == pytest.approx(sum(metrics["accuracy"].values()) / 2)
    assert {k: result[k] for k in metrics} == metrics
    rows = [json.loads(line) for line in details_path(out).read_text().splitlines()]
    assert details_path(out).name == "eval_round_0_details.jsonl"
    assert [r["suite"] for r in rows] == ["hellaswag"] * 2 + ["gsm8k"] * 2
    assert all(isinstance(r["correct"], bool) for r in rows)


@pytest.mark.slow
def test_generative_suites_share_one_generate_call_and_each_scores_its_own_answers(
    base_model_dir, tmp_path, monkeypatch, one_torch_thread
):
    # the real model, its generate wrapped only to count calls and to record which answer each prompt got
    from middo import modeling

    real_load = modeling.load_model
    calls: list[int] = []
    answer_to: dict[tuple[int, ...], str] = {}  # prompt token ids (padding dropped) -> decoded answer
    loaded = []

    def load_and_count(*args, **kwargs):
        lm = real_load(*args, **kwargs)
        generate = lm.model.generate

        def counted(*, input_ids, attention_mask, **kw):
            out = generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
            calls.append(len(input_ids))
            for row in range(len(input_ids)):
                ids = tuple(input_ids[row][attention_mask[row].bool()].tolist())
                answer_to[ids] = lm.tokenizer.decode(out[row, input_ids.shape[1] :], skip_special_tokens=True)
            return out

        lm.model.generate = counted
        loaded.append(lm)
        return lm

    monkeypatch.setattr(modeling, "load_model", load_and_count)
    suites, options = ["gsm8k", "hellaswag", "math500", "mmlu"], {"mmlu": {"mode": "generate"}}
    out = tmp_path / "eval.json"
    result = evaluate_model(
        base_model_dir, suites, 2, out, "cpu", "float32", 12, 42, bootstrap=50, suite_options=options
    )
    # one call for the 6 prompts of gsm8k, math500 and mmlu (they fit one batch); hellaswag generates nothing
    assert calls == [6] and result["generation"]["prompts"] == 6
    rows = [json.loads(line) for line in details_path(out).read_text().splitlines()]
    tok = loaded[0].tokenizer
    seen = []
    for name in ("gsm8k", "math500", "mmlu"):
        prompts = SUITES[name].prompts(SUITES[name].load(2, 42), **options.get(name, {}))
        expected = [answer_to[tuple(chat_ids(tok, p))] for p in prompts]
        assert [r["completion"] for r in rows if r["suite"] == name] == expected, name
        seen += expected
    assert len(set(seen)) == len(seen)  # distinct answers: a mapping that mixes suites or items cannot pass
    assert [r["suite"] for r in rows] == [s for s in suites for _ in range(2)]
