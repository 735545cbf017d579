"""The refine stage end to end against real OpenAI-compatible servers: `transformers serve` with the default model,
and scripted HTTP servers that refuse, send junk or answer like a capable teacher; plus the cache's view of a
swapped model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from scripted_teacher import NEW_PROMPT, answer_to, script

from middo.config import RefineConfig, TeacherConfig
from middo.dataio import read_dataset, write_jsonl
from middo.errors import MiddoError
from middo.records import Record
from middo.refine.prompts import answer_prompt, rewrite_prompt
from middo.refine.run import build_teacher, refine_metrics, refine_round
from middo.teachers.base import Sampling
from middo.teachers.cache import draw_seed

ROOT = Path(__file__).resolve().parents[2]

RECORDS = [
    Record(
        id="hard",
        instruction="Derive the Euler-Lagrange equations from the principle of stationary action.",
        output="Let S = ∫L dt; vary q by εη with fixed ends; integrate by parts ...",
    ),
    Record(id="poor", instruction="capitl of france??", output="berlin i think"),
    Record(
        id="rare",
        instruction="Explain the fornyrðislag meter of Old Norse poetry.",
        output="Eight short lines per stanza, two lifts each, bound by alliteration.",
    ),
    Record(id="ok1", instruction="Give a synonym for big.", output="Large."),
    Record(id="ok2", instruction="What is 2 + 2?", output="4."),
    Record(id="ok3", instruction="Name a primary colour.", output="Red."),
    Record(id="ok4", instruction="What is the opposite of cold?", output="Hot."),
    Record(id="ok5", instruction="Spell 'cat' backwards.", output="tac"),
    Record(id="ok6", instruction="How many legs does a spider have?", output="Eight."),
    Record(id="ok7", instruction="What is H2O?", output="Water."),
]
FLAGS = {"hard": "complexity", "poor": "quality", "rare": "diversity"}  # id -> axis, or a tuple of axes
MAX_FAILED = RefineConfig().max_failed_fraction  # the shipped defaults, not second copies of them
MERGE = RefineConfig().merge
SELECTION = RefineConfig().selection


def _axes(flag) -> tuple[str, ...]:
    return (flag,) if isinstance(flag, str) else tuple(flag or ())


def _inputs(tmp_path: Path, records=RECORDS, flags=FLAGS, neighbors=None) -> tuple[Path, Path]:
    """The round's data and a diagnosis of it; ``neighbors`` (id -> ids) adds the column a current diagnosis has."""
    data = tmp_path / "data" / "train.jsonl"
    write_jsonl(records, data)
    diag = tmp_path / "diagnosis"
    diag.mkdir()
    columns = {
        "id": [r.id for r in records],
        "knn_sim": [0.1 if r.id == "rare" else 0.9 for r in records],
        **{
            f"flag_{a}": [a in _axes(flags.get(r.id)) for r in records] for a in ("complexity", "diversity", "quality")
        },
    }
    if neighbors is not None:
        columns["neighbors"] = pl.Series([neighbors.get(r.id, []) for r in records], dtype=pl.List(pl.String))
    pl.DataFrame(columns).write_parquet(diag / "scores.parquet")
    return data, diag


def _refine(
    tmp_path, teacher_cfg, tag="run", max_failed_fraction=MAX_FAILED, merge=MERGE, selection=SELECTION, round_=1
):
    data, diag = (
        _inputs(tmp_path)
        if not (tmp_path / "diagnosis").exists()
        else (tmp_path / "data/train.jsonl", tmp_path / "diagnosis")
    )
    out, metrics = tmp_path / tag / "data", tmp_path / tag / "metrics"
    report = refine_round(
        data,
        diag,
        out,
        metrics,
        metrics / "refine.json",
        round_,
        ("quality", "complexity", "diversity"),
        0.1,
        teacher_cfg,
        42,
        "cpu",
        "float32",
        max_failed_fraction=max_failed_fraction,
        merge=merge,
        selection=selection,
    )
    return report, read_dataset(out / "train.jsonl").records, metrics


def _assert_counts_add_up(report, records):
    assert report["size_after"] == len(records) == report["size_before"] - report["removed"] + report["added"]
    assert report["kept"] == report["size_before"] - report["removed"] == sum(r.parent_id is None for r in records)
    assert report["added"] == sum(report["added_by_axis"].values())
    assert report["unusable"] == sum(report["unusable_by"].values()) <= report["asked"]


@pytest.mark.server
@pytest.mark.slow
def test_each_operation_through_a_real_server(served_model, tmp_path):
    cfg = TeacherConfig(
        backend="openai",
        model=served_model.model,
        base_url=served_model.base_url,
        max_new_tokens=48,
        cache_dir=str(tmp_path / "cache"),
    )
    report, records, metrics = _refine(tmp_path, cfg, max_failed_fraction=1.0)  # wiring, not the 135M's quality
    _assert_counts_add_up(report, records)
    assert report["size_before"] == len(RECORDS)
    changes = [json.loads(line) for line in (metrics / "changes.jsonl").read_text().splitlines()]
    assert {c["parent_id"]: c["op"] for c in changes} == {"hard": "simplify", "poor": "improve", "rare": "diversify"}
    made = {c["id"]: c for c in changes if "id" in c}  # whichever replies were usable: their lineage is right
    for new in (r for r in records if r.parent_id is not None):
        c = made[new.id]
        assert (new.parent_id, new.round, new.axis, new.op, new.input) == (c["parent_id"], 1, c["axis"], c["op"], "")
    assert len(made) == report["added"]
    assert (metrics / "refine_report.md").read_text().startswith("# Refinement, round 1")
    assert json.loads((metrics / "refine.json").read_text())["refine"]["teacher_calls"] >= 3


def _openai(server, tmp_path, **kwargs) -> TeacherConfig:
    return TeacherConfig(
        backend="openai",
        model="m",
        base_url=server.base_url,
        max_retries=0,
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


def test_garbage_server_fails_the_round_and_writes_nothing(fake_server, tmp_path):
    server = fake_server(lambda i, body: (200, b"this is not json {"))
    with pytest.raises(MiddoError, match=r"round 1: 3 of 3 teacher replies unusable \(100% > .*: 3 failed\b") as err:
        _refine(tmp_path, _openai(server, tmp_path))
    assert "a rerun asks the teacher again" in str(err.value)
    assert not (tmp_path / "run").exists()  # no dataset, no change log, no metrics
    assert not list((tmp_path / "cache").rglob("*.json"))  # failed calls are not cached: a rerun asks again


def test_a_refusing_server_fails_the_round_and_writes_nothing(chat_server, tmp_path):
    server = chat_server(lambda prompt: REFUSAL)
    with pytest.raises(MiddoError) as err:
        _refine(tmp_path, _openai(server, tmp_path))
    msg = str(err.value)
    assert msg.startswith("round 1: 3 of 3 teacher replies unusable (100% > refine.max_failed_fraction 50%): ")
    # simplify and improve reason in steps, so only a tagged final prompt counts; diversify's reply may be untagged
    assert "2 unparseable, 1 rejected (refusal in the instruction: 1)" in msg
    assert f"unparseable: no <prompt> block -- {REFUSAL!r}" in msg  # the first bad reply and its reason
    assert not (tmp_path / "run" / "data" / "train.jsonl").exists()
    assert not (tmp_path / "run").exists()
    assert len(server.posts) == 3  # a refused rewrite is never sent on to be answered


REFUSAL = "I'm sorry, but I can't help with that."
WITH_INPUT = Record(
    id="inp", instruction="Translate the sentence into French.", input="The cat sleeps.", output="Le chat dormir."
)
NEIGHBORS = {"rare": ["ok1", "hard"], "hard": ["ok2", "ok6"], "poor": ["ok7", "ok3"], "inp": ["ok5", "ok4"]}


def test_each_operation_succeeds_through_an_openai_server(chat_server, tmp_path):
    """A capable teacher over real HTTP: every success path runs, and each request shows exactly what it should."""
    records = [*RECORDS, WITH_INPUT]
    flags = {**FLAGS, "inp": ("complexity", "quality")}  # two axes: two new samples, the original removed once
    _inputs(tmp_path, records, flags, NEIGHBORS)
    server = chat_server(script())
    cfg = _openai(server, tmp_path, temperature=1.0, top_p=0.9)
    report, out, metrics = _refine(tmp_path, cfg, merge="reference")

    by_id = {r.id: r for r in records}
    jobs = [("hard", "simplify"), ("poor", "improve"), ("rare", "diversify"), ("inp", "simplify"), ("inp", "improve")]
    hints = {"rare": [by_id["ok1"].prompt_text, by_id["hard"].prompt_text]}
    rewrites = {rewrite_prompt(op, by_id[rid].prompt_text, hints.get(rid, ())) for rid, op in jobs}
    new_prompts = {(rid, op): NEW_PROMPT[op](by_id[rid].prompt_text) for rid, op in jobs}
    sent = [post["messages"][-1]["content"] for post in server.posts]
    assert set(sent[:5]) == rewrites and len(sent) == 10  # all rewrites first, then the answers to the new prompts
    assert set(sent[5:]) == {answer_prompt(p) for p in new_prompts.values()}
    diversify = next(m for m in sent if "Core prompt:" in m)
    assert "Hint prompt 1:\nGive a synonym for big.\n\nHint prompt 2:\nDerive the Euler" in diversify
    improve = [m for m in sent[:5] if "Prompt to improve:" in m]
    assert len(improve) == 2 and not any(r.output in m for m in improve for r in records)  # the prompt only
    assert any("Translate the sentence into French.\nThe cat sleeps." in m for m in improve)
    # sampled: each request is round 1's first draw of its prompt, asked with that draw's seed
    assert {(p["temperature"], p["top_p"], p["seed"]) for p in server.posts} == {(1.0, 0.9, draw_seed(42, 1, 0))}

    children = {(r.parent_id, r.op): r for r in out if r.parent_id is not None}
    assert children.keys() == set(jobs)
    for (rid, op), new in children.items():
        axis = {"simplify": "complexity", "improve": "quality", "diversify": "diversity"}[op]
        assert (new.parent_id, new.round, new.axis, new.op) == (rid, 1, axis, op)
        assert (new.instruction, new.input, new.output) == (new_prompts[rid, op], "", answer_to(new_prompts[rid, op]))
    assert [r.id for r in out if r.parent_id is None] == [r.id for r in records if r.id not in ("hard", "poor", "inp")]
    assert (report["size_before"], report["removed"], report["added"], report["size_after"]) == (11, 3, 5, 13)
    assert report["removed_by"] == {"complexity": 1, "quality": 1, "complexity+quality": 1}
    assert report["added_by_axis"] == {"complexity": 2, "diversity": 1, "quality": 2}
    _assert_counts_add_up(report, out)
    info = json.loads((tmp_path / "run" / "data" / "dataset_info.json").read_text())  # for llamafactory-cli train
    assert list(info) == ["middo_round_1"] and info["middo_round_1"]["file_name"] == "train.jsonl"
    assert json.loads((metrics / "refine.json").read_text())["refine"] == refine_metrics(report)  # numbers only
    written = json.loads((metrics / "summary.json").read_text())  # the whole report, in the refine folder
    assert {k: written[k] for k in ("merge", "size_before", "removed", "added", "kept", "size_after")} == {
        "merge": "reference",
        "size_before": 11,
        "removed": 3,
        "added": 5,
        "kept": 8,
        "size_after": 13,
    }
    changes = [json.loads(line) for line in (metrics / "changes.jsonl").read_text().splitlines()]
    assert {(c["parent_id"], c["op"]): c["result"] for c in changes} == {
        **{job: "replaced" for job in jobs},
        ("rare", "diversify"): "added",
    }
    assert next(c for c in changes if c["op"] == "diversify")["hints"] == ["ok1", "hard"]


def test_an_older_diagnosis_without_neighbors_refines_without_hints(chat_server, tmp_path, caplog):
    _inputs(tmp_path)  # no neighbors column
    server = chat_server(script())
    report, out, _ = _refine(tmp_path, _openai(server, tmp_path))
    assert "has no 'neighbors' column" in caplog.text
    diversify = next(
        p["messages"][-1]["content"] for p in server.posts if "Core prompt:" in p["messages"][-1]["content"]
    )
    assert "Hint prompt" not in diversify
    assert report["diversify_without_hints"] == 1 and report["added_by_axis"]["diversity"] == 1
    _assert_counts_add_up(report, out)


JUNK = {  # (op, text in the prompt shown) -> a reply; each a shape the demo's 135M teacher produced
    (
        "simplify",
        "Derive the Euler",
    ): "Step 4 - Final prompt:\n<prompt>Rewrite it as:\n\nDerive the equations.</prompt>",
    ("improve", "Give a synonym"): "<prompt>Give a synonym for large.</prompt>",
    ("answer", "Give a synonym for large."): "Give a synonym for large.",
    ("answer", "What is 2 + 2"): "\U0001f600" * 8,
}


def test_junk_replies_are_rejected_and_good_ones_kept(chat_server, tmp_path):
    records = [*RECORDS, WITH_INPUT]
    flags = {**FLAGS, "ok1": "quality", "ok2": "complexity", "inp": "complexity"}
    _inputs(tmp_path, records, flags)
    server = chat_server(script(JUNK))
    report, out, metrics = _refine(tmp_path, _openai(server, tmp_path))
    _assert_counts_add_up(report, out)
    assert (report["asked"], report["unusable"], report["removed"], report["added"]) == (6, 3, 2, 3)
    assert report["rejected"] == {
        "answer repeats the instruction": 1,
        "degenerate answer (no letters or digits)": 1,
        "label left in the instruction": 1,
    }
    by_id = {r.id: r for r in out}
    assert {"hard", "ok1", "ok2", "rare"} <= by_id.keys() and not {"poor", "inp"} & by_id.keys()
    simplified = next(r for r in out if r.parent_id == "inp")
    assert simplified.instruction == "In plain words: Translate the sentence into French. The cat sleeps."
    assert simplified.input == ""  # the rewrite covered instruction and input; the old input would be stale
    written = (tmp_path / "run" / "data" / "train.jsonl").read_text(encoding="utf-8")
    assert not [j for j in ("Rewrite it as:", "\U0001f600", "synonym for large", "Step 4") if j in written]
    changes = {c["parent_id"]: c for c in map(json.loads, (metrics / "changes.jsonl").read_text().splitlines())}
    assert changes["hard"]["status"] == "rejected: label left in the instruction"
    assert changes["hard"]["result"] == "kept_original" and "Rewrite it as:" in changes["hard"]["reply"]
    assert changes["ok2"]["status"] == "rejected: degenerate answer (no letters or digits)"
    assert "label left in the instruction 1" in (metrics / "refine_report.md").read_text()
    assert json.loads((metrics / "refine.json").read_text())["refine"]["unusable"] == 3
    # half unusable is not more than half; a stricter threshold fails the same round before writing anything
    with pytest.raises(MiddoError, match=r"3 of 6 teacher replies unusable \(50% > refine.max_failed_fraction 40%\)"):
        _refine(tmp_path, _openai(server, tmp_path), tag="strict", max_failed_fraction=0.4)
    assert not (tmp_path / "strict").exists()


def test_a_reply_cut_at_max_new_tokens_is_rejected_and_stays_rejected_from_the_cache(chat_server, tmp_path):
    """finish_reason "length" (the reply hit refine.teacher.max_new_tokens) makes a reply unusable under its own
    counted reason, on the rewrite call and on the answer call, while complete ("stop") replies are kept; replayed
    from the cache, the cut replies are rejected again without a request."""
    _inputs(tmp_path)
    reply = script()

    def cut_two(message: str):
        text = reply(message)
        if "Core prompt:" in message or message.startswith(answer_prompt("In plain words")):
            return text, "length"  # rare's diversify rewrite, and the answer to hard's simplified prompt
        return text

    server = chat_server(cut_two)
    report, out, metrics = _refine(tmp_path, _openai(server, tmp_path), max_failed_fraction=1.0)
    _assert_counts_add_up(report, out)
    assert (report["asked"], report["unusable"], report["removed"], report["added"]) == (3, 2, 1, 1)
    assert report["rejected"] == {"cut at max_new_tokens": 2} and report["unusable_by"]["rejected"] == 2
    assert [(r.parent_id, r.op) for r in out if r.parent_id] == [("poor", "improve")]
    changes = {c["parent_id"]: c for c in map(json.loads, (metrics / "changes.jsonl").read_text().splitlines())}
    assert {rid: (changes[rid]["status"], changes[rid]["result"]) for rid in ("hard", "rare")} == {
        "hard": ("rejected: cut at max_new_tokens", "kept_original"),
        "rare": ("rejected: cut at max_new_tokens", "kept_original"),
    }
    assert "cut at max_new_tokens 2" in (metrics / "refine_report.md").read_text()
    with pytest.raises(
        MiddoError, match=r"2 of 3 .*\(cut at max_new_tokens: 2\).* raise refine.teacher.max_new_tokens"
    ):
        _refine(tmp_path, _openai(server, tmp_path), tag="strict", max_failed_fraction=0.5)
    posts = len(server.posts)
    again, out_again, _ = _refine(tmp_path, _openai(server, tmp_path), tag="again", max_failed_fraction=1.0)
    assert len(server.posts) == posts  # every reply from the cache, the cut ones still known as cut
    assert again.pop("cache") == {"hits": 5, "misses": 0}  # three rewrites, two answers (rare's rewrite was cut)
    assert again == {k: v for k, v in report.items() if k != "cache"} and out_again == out


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_sampled_round_draws_afresh_and_a_greedy_one_shares_replies(chat_server, tmp_path, temperature):
    """The same flagged samples in round 2: sampled, every request goes to the server again with round 2's seeds (a
    replayed round-1 reply would only be a duplicate); greedy, round 1's replies are reused. A rerun of round 1 (a
    resumed stage) is answered by the cache either way."""
    _inputs(tmp_path)
    server = chat_server(script())
    cfg = _openai(server, tmp_path, temperature=temperature)
    _refine(tmp_path, cfg, tag="round1")
    asked = len(server.posts)
    assert asked == 6  # three rewrites, three answers
    _refine(tmp_path, cfg, tag="round1-rerun")
    assert len(server.posts) == asked
    _refine(tmp_path, cfg, tag="round2", round_=2)
    round_2 = server.posts[asked:]
    if temperature == 0:
        assert round_2 == [] and {p["seed"] for p in server.posts} == {42}
    else:
        assert sorted(p["messages"][-1]["content"] for p in round_2) == sorted(
            p["messages"][-1]["content"] for p in server.posts[:asked]
        )
        assert {p["seed"] for p in server.posts[:asked]} == {draw_seed(42, 1, 0)}
        assert {p["seed"] for p in round_2} == {draw_seed(42, 2, 0)}


def _tiny_model(folder: Path, base_model_dir: Path, seed: int) -> None:
    """A random 1-layer Llama with the default model's tokenizer and chat template: a different teacher."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base_model_dir / name, folder / name)


@pytest.mark.slow
def test_a_new_model_at_the_same_path_is_asked_again(base_model_dir, tmp_path):
    """The cache used to key on `models/base`, so a changed base model replayed the old model's replies."""
    model = tmp_path / "models" / "base"
    _tiny_model(model, base_model_dir, seed=0)
    cfg = TeacherConfig(backend="transformers", model=str(model), cache_dir=str(tmp_path / "cache"))
    prompts, sampling = ["What is 2 + 2?", "Name a colour."], Sampling(max_new_tokens=8)

    def ask():
        teacher = build_teacher(cfg, "cpu", "float32")
        return teacher, teacher.complete(prompts, sampling)

    first, replies = ask()
    assert (first.hits, first.misses) == (0, 2) and all(replies)
    same, again = ask()
    assert (same.hits, same.misses, again) == (2, 0, replies)
    shutil.rmtree(model)
    _tiny_model(model, base_model_dir, seed=1)  # new weights, same path
    swapped, _ = ask()
    assert (swapped.hits, swapped.misses) == (0, 2)


@pytest.mark.slow
def test_killed_stage_resumes_from_cache(chat_server, tmp_path):
    """Kill the refine stage mid-run, re-run: fewer teacher calls, same output as an uninterrupted run.

    The scripted teacher writes good samples, so every rewrite is followed by an answer call, and takes a second over
    each answer: the rewrites are cached (one chunk) while the answers are still being asked, which is when the kill
    lands. (The served 135M model's replies were all rejected, leaving no second call to kill the stage in.)
    """
    _inputs(tmp_path)
    reply = script()

    def slow_answers(message: str) -> str | None:
        if message.startswith(answer_prompt("")):
            time.sleep(1.0)
        return reply(message)

    server = chat_server(slow_answers)
    teacher = {"backend": "openai", "model": "scripted", "base_url": server.base_url, "concurrency": 1}

    def cmd(tag, cache):
        params = tmp_path / f"params_{tag}.yaml"
        refine = {"max_failed_fraction": 1.0, "teacher": {**teacher, "cache_dir": str(cache)}}
        params.write_text(yaml.safe_dump({"refine": refine}))
        return [
            sys.executable,
            str(ROOT / "stages/refine.py"),
            "--params",
            str(params),
            "--round",
            "1",
            "--data",
            str(tmp_path / "data/train.jsonl"),
            "--diagnosis",
            str(tmp_path / "diagnosis"),
            "--out",
            str(tmp_path / tag / "data"),
            "--metrics",
            str(tmp_path / tag / "m"),
            "--summary",
            str(tmp_path / tag / "refine.json"),
        ]

    def entries(cache: Path) -> dict[Path, int]:  # one file per cached call -> when it was written
        return {p: p.stat().st_mtime_ns for p in cache.glob("??/*.json")}

    subprocess.run(cmd("full", tmp_path / "cache_full"), check=True, capture_output=True, text=True)
    full = entries(tmp_path / "cache_full")

    cache = tmp_path / "cache_killed"
    proc = subprocess.Popen(
        cmd("killed", cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not entries(cache):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = entries(cache)
    assert before, "no teacher call finished before the kill"
    assert not (tmp_path / "killed/data/train.jsonl").exists()  # nothing half-written

    subprocess.run(cmd("killed", cache), check=True, capture_output=True, text=True)
    after = entries(cache)
    assert {p: after[p] for p in before} == before  # replayed from the cache, not asked (and written) again
    assert len(after) == len(full)  # the rest was asked: the same calls as an uninterrupted run
    # a warm and a cold run write the same metrics (DVC hashes them)
    for written in ("refine.json", "env/refine.json", "m/summary.json"):
        assert (tmp_path / "killed" / written).read_bytes() == (tmp_path / "full" / written).read_bytes()
    assert (tmp_path / "killed/data/train.jsonl").read_bytes() == (tmp_path / "full/data/train.jsonl").read_bytes()
