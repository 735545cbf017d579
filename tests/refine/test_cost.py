"""What a round costs, against a scripted OpenAI-compatible server on 127.0.0.1 that reports ``usage`` as a real one
does: usage recorded and summed, a plan that matches the run it predicts, and a budget that stops a run which a
rerun then resumes without sending anything twice."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from scripted_teacher import script

from middo.cli import main as cli_main
from middo.config import TeacherConfig, load_params
from middo.dataio import write_jsonl
from middo.records import Record
from middo.refine.plan import render_plan
from middo.refine.run import plan_for, read_round, refine_round
from middo.round_report import round_page
from middo.teachers.usage import BudgetExceeded, Price, Usage

ROOT = Path(__file__).resolve().parents[2]
PRICE = Price(0.15, 0.60)  # gpt-4o-mini's list price in $ per million tokens (docs/cost.md has the date)
MERGE = {"merge": "reference", "precedence": ("quality", "complexity", "diversity"), "max_added_fraction": 0.1}


def _records(tag: str) -> tuple[list[Record], dict[str, str]]:
    """Ten records, three flagged (one per axis); ``tag`` makes every prompt differ between data sets."""
    hard = f"Derive the Euler-Lagrange equations for system {tag} from the principle of stationary action."
    records = [
        Record(id=f"hard{tag}", instruction=hard, output="Let S = ∫L dt; vary q by εη with fixed ends; ..."),
        Record(id=f"poor{tag}", instruction=f"capitl of france?? ({tag})", output="berlin i think"),
        Record(id=f"rare{tag}", instruction=f"Explain the fornyrðislag meter, part {tag}.", output="Eight lines."),
        *(Record(id=f"ok{i}{tag}", instruction=f"What is {i} + {tag}?", output=f"{i}{tag}") for i in range(7)),
    ]
    return records, {f"hard{tag}": "complexity", f"poor{tag}": "quality", f"rare{tag}": "diversity"}


def _inputs(folder: Path, tag: str) -> tuple[Path, Path]:
    records, flags = _records(tag)
    data, diag = folder / "data" / "train.jsonl", folder / "diagnosis"
    write_jsonl(records, data)
    diag.mkdir(parents=True)
    pl.DataFrame(
        {
            "id": [r.id for r in records],
            "knn_sim": [0.1 if r.id.startswith("rare") else 0.9 for r in records],
            **{f"flag_{a}": [flags.get(r.id) == a for r in records] for a in ("complexity", "diversity", "quality")},
        }
    ).write_parquet(diag / "scores.parquet")
    return data, diag


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from middo.modeling import load_tokenizer

    return load_tokenizer(base_model_dir)


@pytest.fixture
def priced_server(fake_server, tokenizer):
    """A capable scripted teacher that counts tokens its own way, as OpenAI does (each message's text plus 4, plus 3
    to prime the reply), not through our chat template; ``state["verbose"]`` multiplies the completion counts (a
    teacher that writes far more than its history said)."""
    reply, state = script(), {"verbose": 1}

    def respond(i: int, body: dict) -> tuple[int, bytes]:
        content = reply(body["messages"][-1]["content"])
        prompt = sum(len(tokenizer(m["content"])["input_ids"]) + 4 for m in body["messages"]) + 3
        completion = len(tokenizer(content)["input_ids"]) * state["verbose"]
        return 200, json.dumps(
            {
                "id": f"cmpl-{i}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        ).encode()

    server = fake_server(respond)
    server.state = state
    return server


def _cfg(server, tmp_path: Path, base_model_dir, **kw) -> TeacherConfig:
    return TeacherConfig(
        backend="openai",
        model="scripted",
        base_url=server.base_url,
        cache_dir=str(tmp_path / "cache"),
        max_retries=0,
        tokenizer=str(base_model_dir),
        **kw,
    )


def _priced(cfg: TeacherConfig, max_cost: float | None = None) -> TeacherConfig:
    from middo.config import PriceConfig

    return replace(cfg, price=PriceConfig(PRICE.input, PRICE.output), max_cost=max_cost)


def _run(tmp_path: Path, tag: str, cfg: TeacherConfig, round_: int, run: str = "run") -> dict:
    folder = tmp_path / tag
    data, diag = (folder / "data" / "train.jsonl", folder / "diagnosis") if folder.exists() else _inputs(folder, tag)
    out = tmp_path / run / tag
    return refine_round(
        data, diag, out / "data", out / "metrics", out / "refine.json", round_, MERGE["precedence"], 0.1, cfg, 42,
        "cpu", "float32", max_failed_fraction=0.5, merge="reference", selection="model",
    )  # fmt: skip


def _plan(tmp_path: Path, tag: str, cfg: TeacherConfig, round_: int) -> dict:
    folder = tmp_path / tag
    data, diag = (folder / "data" / "train.jsonl", folder / "diagnosis") if folder.exists() else _inputs(folder, tag)
    return plan_for(read_round(data, diag, "model", 42, round_), cfg, 42, "cpu", "float32", round_, **MERGE)


def _sent_usage(server, tokenizer, since: int = 0) -> Usage:
    """What the server charged for the requests it received from ``since`` on (recomputed as it counts)."""
    reply = script()
    p = c = 0
    for body in server.posts[since:]:
        content = reply(body["messages"][-1]["content"])
        p += sum(len(tokenizer(m["content"])["input_ids"]) + 4 for m in body["messages"]) + 3
        c += len(tokenizer(content)["input_ids"]) * server.state["verbose"]
    return Usage(p, c)


def test_usage_is_recorded_per_reply_and_summed_per_operation(priced_server, tmp_path, base_model_dir, tokenizer):
    cfg = _priced(_cfg(priced_server, tmp_path, base_model_dir))
    report = _run(tmp_path, "a", cfg, 1)
    sent = _sent_usage(priced_server, tokenizer)
    assert len(priced_server.posts) == 6  # three rewrites, three answers
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("??/*.json")]
    assert len(entries) == 6 and all(e["round"] == 1 for e in entries)
    assert (
        Usage(sum(e["usage"]["prompt_tokens"] for e in entries), sum(e["usage"]["completion_tokens"] for e in entries))
        == sent
    )

    usage = report["teacher_usage"]
    total = usage["total"]
    assert (total["requests"], total["cached"], total["failed"], total["unknown_usage"]) == (6, 0, 0, 0)
    assert (total["prompt_tokens"], total["completion_tokens"]) == (sent.prompt_tokens, sent.completion_tokens)
    assert total["cost"] == round(PRICE.cost(sent), 6) and total["cached_cost"] == 0
    assert set(usage["operations"]) == {"simplify", "improve", "diversify"}
    for op, steps in usage["operations"].items():
        assert steps["rewrite"]["requests"] == steps["answer"]["requests"] == 1, op
        assert steps["total"]["prompt_tokens"] == steps["rewrite"]["prompt_tokens"] + steps["answer"]["prompt_tokens"]
    assert sum(s["total"]["cost"] for s in usage["operations"].values()) == pytest.approx(total["cost"], abs=1e-5)

    metrics = tmp_path / "run" / "a"
    flat = json.loads((metrics / "refine.json").read_text())["refine"]["teacher"]
    assert flat["total"]["prompt_tokens"] == sent.prompt_tokens and flat["simplify_rewrite"]["requests"] == 1
    page = (metrics / "metrics" / "refine_report.md").read_text()
    row = f"| **total** |  | 6 | 0 | 0 | {sent.prompt_tokens} | {sent.completion_tokens} | {total['cost']:.4f} |"
    assert "## Teacher usage" in page and row in page and "| simplify (complexity) | rewrite | 1 | 0 |" in page
    rounds = tmp_path / "metrics"  # the round's page (reports/rounds/round_R.md) reads the same summary
    (rounds / "round_1" / "refine").mkdir(parents=True)
    shutil.copy(metrics / "metrics" / "summary.json", rounds / "round_1" / "refine" / "summary.json")
    shown = round_page(rounds, 1, 0, None, Path("img"), 3)
    assert "### Teacher usage" in shown and row in shown

    # round 2 on the same data: every greedy reply comes from round 1's entries, shown cached and free
    again = _run(tmp_path, "a", cfg, 2, run="again")["teacher_usage"]["total"]
    assert len(priced_server.posts) == 6  # nothing sent
    assert (again["requests"], again["cached"], again["cost"]) == (6, 6, 0.0)
    assert again["cached_cost"] == total["cost"] and again["prompt_tokens"] == sent.prompt_tokens

    # entries written before usage was recorded still load: their tokens are unknown (0), said so, never a crash
    for path in (tmp_path / "cache").glob("??/*.json"):
        entry = json.loads(path.read_text())
        del entry["usage"], entry["round"]
        path.write_text(json.dumps(entry))
    old = _run(tmp_path, "a", cfg, 1, run="old")
    assert len(priced_server.posts) == 6
    total = old["teacher_usage"]["total"]
    assert (total["requests"], total["unknown_usage"], total["cached"], total["prompt_tokens"]) == (6, 6, 6, 0)
    assert total["cost"] == 0
    assert "6 cached replies predate usage records" in (tmp_path / "old/a/metrics/refine_report.md").read_text()


def test_plan_matches_the_run_it_predicts(priced_server, tmp_path, base_model_dir, tokenizer):
    cfg = _priced(_cfg(priced_server, tmp_path, base_model_dir))
    cold = _plan(tmp_path, "a", cfg, 1)  # no history yet: completions at max_new_tokens, prompts counted anyway
    assert cold["history"] == 0 and "max_new_tokens" in cold["notes"][0]
    assert cold["total"]["requests"] == 6 and cold["total"]["upper_bound"] == 3 and cold["total"]["cached"] == 0
    assert cold["total"]["completion_tokens"] == 6 * cfg.max_new_tokens
    assert not priced_server.posts  # a plan sends nothing
    _run(tmp_path, "a", cfg, 1)  # the history the next plan learns from
    assert len(priced_server.posts) == 6

    warm = _plan(tmp_path, "a", cfg, 1)  # everything asked is cached now
    assert (warm["total"]["requests"], warm["total"]["cached"], warm["total"]["upper_bound"]) == (0, 6, 0)
    assert warm["paid_so_far"] == pytest.approx(PRICE.cost(_sent_usage(priced_server, tokenizer)), abs=1e-6)

    plan = _plan(tmp_path, "b", cfg, 2)  # new data: nothing cached, history from round 1
    assert plan["history"] == 6 and plan["scale"] != 1.0  # the server counts its own way; the plan scales to it
    seen = len(priced_server.posts)
    _run(tmp_path, "b", cfg, 2)
    sent = _sent_usage(priced_server, tokenizer, since=seen)
    assert plan["total"]["requests"] == len(priced_server.posts) - seen == 6
    for estimated, real in ((plan["total"]["prompt_tokens"], sent.prompt_tokens),
                            (plan["total"]["completion_tokens"], sent.completion_tokens)):  # fmt: skip
        assert abs(estimated - real) <= 0.10 * real, (estimated, real)
    assert abs(plan["total"]["cost"] - PRICE.cost(sent)) <= 0.10 * PRICE.cost(sent)
    table = render_plan(plan)
    assert "| simplify | rewrite | 1 | 0 | 0 |" in table and "through the Batch API (half price)" in table


def test_middo_plan_prints_the_plan_and_sends_nothing(priced_server, tmp_path, base_model_dir, capsys):
    cfg = _priced(_cfg(priced_server, tmp_path, base_model_dir))
    data, diag = _inputs(tmp_path / "c", "c")
    params = yaml_params(tmp_path, cfg)
    code = cli_main(["plan", "1", "--data", str(data), "--diagnosis", str(diag), "--params", str(params),
                     "--json", str(tmp_path / "plan.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "Round 1: what refine will send" in out
    assert "| total |  | 6 | 3 | 0 |" in out
    assert json.loads((tmp_path / "plan.json").read_text())["total"]["requests"] == 6
    assert not priced_server.posts
    assert cli_main(["plan", "7", "--params", str(params)]) == 2  # not a round of params.yaml
    assert "round 7: not in" in capsys.readouterr().err


def yaml_params(tmp_path: Path, cfg: TeacherConfig) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["refine"]["teacher"].update(
        backend="openai", model=cfg.model, base_url=cfg.base_url, cache_dir=cfg.cache_dir, tokenizer=cfg.tokenizer,
        price={"input": cfg.price.input, "output": cfg.price.output},
    )  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_params(path)  # valid
    return path


def test_a_budget_refuses_stops_and_resumes_without_resending(priced_server, tmp_path, base_model_dir, tokenizer):
    base = _cfg(priced_server, tmp_path, base_model_dir)
    _run(tmp_path, "a", _priced(base), 1)  # history: round 1 on other data
    seen = len(priced_server.posts)
    estimate = _plan(tmp_path, "b", _priced(base), 2)["total"]["cost"]

    with pytest.raises(BudgetExceeded, match=r"estimated teacher cost \$[0-9.]+ for 6 requests .* over "):
        _run(tmp_path, "b", _priced(base, max_cost=estimate * 0.5), 2)  # refused before anything is sent
    assert len(priced_server.posts) == seen and not (tmp_path / "run" / "b").exists()

    priced_server.state["verbose"] = 20  # the teacher writes far more than its history said
    budget = estimate * 1.05
    with pytest.raises(BudgetExceeded, match=r"reached refine.teacher.max_cost .* after 3 paid replies") as err:
        _run(tmp_path, "b", _priced(base, max_cost=budget), 2)
    assert "(3 requests not sent)" in str(err.value)  # it stopped between the two calls: no answer was asked
    assert len(priced_server.posts) == seen + 3  # the three rewrites, no answer sent after the budget was reached
    assert not (tmp_path / "run" / "b").exists()  # nothing written for the round
    rewrites = _sent_usage(priced_server, tokenizer, since=seen)

    with pytest.raises(BudgetExceeded, match=r"plus \$[0-9.]+ already paid by this round"):
        _run(tmp_path, "b", _priced(base, max_cost=budget), 2)  # the same budget is not spent twice
    assert len(priced_server.posts) == seen + 3

    report = _run(tmp_path, "b", _priced(base, max_cost=budget * 100), 2)  # raised: it resumes
    assert len(priced_server.posts) == seen + 6  # only the three answers were sent
    answers = [p["messages"][-1]["content"] for p in priced_server.posts[seen + 3 :]]
    assert all(a.startswith("Respond to the prompt below") for a in answers)
    total = report["teacher_usage"]["total"]
    paid = _sent_usage(priced_server, tokenizer, since=seen + 3)
    # the round's cost holds what its first attempt paid too: the figures do not depend on the attempts
    assert (total["requests"], total["cached"]) == (6, 0)
    assert total["prompt_tokens"] == rewrites.prompt_tokens + paid.prompt_tokens
    assert total["cost"] == pytest.approx(PRICE.cost(rewrites) + PRICE.cost(paid), abs=1e-5)


def test_a_plan_without_its_tokenizer_says_which_setting(tmp_path):
    from middo.errors import MiddoError
    from middo.refine.plan import TokenCounter

    with pytest.raises(MiddoError, match=r"refine.teacher.tokenizer: .*missing is not a local folder"):
        TokenCounter(tmp_path / "missing")


def test_a_budget_needs_a_price():
    from middo.config import ConfigError

    with pytest.raises(ConfigError, match=r"refine.teacher: max_cost: a budget needs refine.teacher.price"):
        load_params(ROOT / "params.yaml", {"refine": {"teacher": {"max_cost": 1.0}}})
