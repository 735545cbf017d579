"""refine.selection: random is the control experiment: same counts per axis as the diagnosis, other ids, seeded."""

import json

import pytest
from scripted_teacher import script
from test_refine_stage import RECORDS, _inputs, _openai, _refine

from middo.refine.selection import random_like, select

IDS = [f"s{i:03d}" for i in range(200)]
FLAGS = {"complexity": set(IDS[:12]), "diversity": set(IDS[12:30]), "quality": set(IDS[30:33])}


def test_random_draws_as_many_per_axis_as_the_diagnosis_flagged():
    drawn = random_like(FLAGS, IDS, seed=42, round_=1)
    assert {a: len(v) for a, v in drawn.items()} == {"complexity": 12, "diversity": 18, "quality": 3}
    assert all(v <= set(IDS) for v in drawn.values())
    assert drawn != FLAGS and drawn["diversity"] != FLAGS["diversity"]  # other ids, not the flagged ones


def test_random_is_deterministic_under_the_seed_and_differs_across_seeds_rounds_axes():
    assert random_like(FLAGS, IDS, 42, 1) == random_like(FLAGS, list(reversed(IDS)), 42, 1)  # input order is moot
    assert random_like(FLAGS, IDS, 42, 1)["complexity"] != random_like(FLAGS, IDS, 7, 1)["complexity"]
    assert random_like(FLAGS, IDS, 42, 1)["complexity"] != random_like(FLAGS, IDS, 42, 2)["complexity"]
    same_size = {"complexity": set(IDS[:5]), "quality": set(IDS[5:10])}
    drawn = random_like(same_size, IDS, 42, 1)
    assert drawn["complexity"] != drawn["quality"]  # axes draw independently


def test_model_selection_is_the_flags_and_unknown_is_refused():
    assert select(FLAGS, IDS, "model", 42, 1) == FLAGS
    with pytest.raises(ValueError, match="selection must be one of"):
        select(FLAGS, IDS, "oracle", 42, 1)


def test_random_selection_through_the_stage_sends_other_samples_to_the_same_teacher(chat_server, tmp_path):
    _inputs(tmp_path)  # the diagnosis flags hard (complexity), poor (quality), rare (diversity)
    server = chat_server(script())
    report, out, metrics = _refine(tmp_path, _openai(server, tmp_path), selection="random")
    drawn = random_like(
        {"complexity": {"hard"}, "diversity": {"rare"}, "quality": {"poor"}}, [r.id for r in RECORDS], 42, 1
    )
    assert report["selection"] == "random"
    assert report["diagnosis_flagged"] == {"complexity": 1, "diversity": 1, "quality": 1}
    assert {a: c["flagged"] for a, c in report["per_axis"].items()} == {"complexity": 1, "diversity": 1, "quality": 1}
    changes = [json.loads(line) for line in (metrics / "changes.jsonl").read_text().splitlines()]
    asked = {c["op"]: c["parent_id"] for c in changes}
    assert asked == {
        "simplify": next(iter(drawn["complexity"])),
        "improve": next(iter(drawn["quality"])),
        "diversify": next(iter(drawn["diversity"])),
    }
    assert asked != {"simplify": "hard", "improve": "poor", "diversify": "rare"}
    assert report["size_after"] == len(out) == report["size_before"] - report["removed"] + report["added"]
    assert "Selection: random (the control" in (metrics / "refine_report.md").read_text()
    again, _, _ = _refine(tmp_path, _openai(server, tmp_path), tag="again", selection="random")
    assert {k: again[k] for k in ("removed", "added", "size_after")} == {
        k: report[k] for k in ("removed", "added", "size_after")
    }
