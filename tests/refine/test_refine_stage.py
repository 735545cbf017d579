"""The refine stage end to end against a real OpenAI-compatible server (`transformers serve`, default model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from middo.config import TeacherConfig
from middo.dataio import read_dataset, write_jsonl
from middo.records import Record
from middo.refine.run import refine_round

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
FLAGS = {"hard": "complexity", "poor": "quality", "rare": "diversity"}


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data" / "train.jsonl"
    write_jsonl(RECORDS, data)
    diag = tmp_path / "diagnosis"
    diag.mkdir()
    pl.DataFrame(
        {
            "id": [r.id for r in RECORDS],
            "knn_sim": [0.1 if r.id == "rare" else 0.9 for r in RECORDS],
            **{f"flag_{a}": [FLAGS.get(r.id) == a for r in RECORDS] for a in ("complexity", "diversity", "quality")},
        }
    ).write_parquet(diag / "scores.parquet")
    return data, diag


def _refine(tmp_path, teacher_cfg, tag="run"):
    data, diag = (
        _inputs(tmp_path)
        if not (tmp_path / "diagnosis").exists()
        else (tmp_path / "data/train.jsonl", tmp_path / "diagnosis")
    )
    out, metrics = tmp_path / tag / "data", tmp_path / tag / "metrics"
    report = refine_round(
        data, diag, out, metrics, metrics / "refine.json", 1, ("quality", "complexity", "diversity"), 0.1, teacher_cfg
    )
    return report, read_dataset(out / "train.jsonl").records, metrics


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
    report, records, metrics = _refine(tmp_path, cfg)
    assert report["kept"] + report["replaced"] + report["added"] - report["dropped_duplicates"] == len(records)
    assert report["size_before"] == len(RECORDS)
    changes = [json.loads(line) for line in (metrics / "changes.jsonl").read_text().splitlines()]
    assert {c["parent_id"]: c["op"] for c in changes} == {"hard": "simplify", "poor": "improve", "rare": "diversify"}
    for c in changes:
        if c["result"] != "kept_original":
            new = next(r for r in records if r.id == c["id"])
            assert (new.parent_id, new.round, new.axis, new.op) == (c["parent_id"], 1, c["axis"], c["op"])
    assert (metrics / "refine_report.md").read_text().startswith("# Refinement, round 1")
    assert json.loads((metrics / "refine.json").read_text())["refine"]["teacher_calls"] >= 3


@pytest.mark.slow
def test_garbage_server_keeps_originals_and_counts_them(fake_server, tmp_path):
    server = fake_server(lambda i, body: (200, b"this is not json {"))
    cfg = TeacherConfig(
        backend="openai", model="m", base_url=server.base_url, max_retries=0, cache_dir=str(tmp_path / "cache")
    )
    report, records, metrics = _refine(tmp_path, cfg)
    assert [r.id for r in records] == [r.id for r in RECORDS]  # every original still there, in order
    assert records == RECORDS
    assert report["replaced"] == report["added"] == 0
    assert report["reply_status"] == {"unparseable": 3}
    assert sum(c["kept_unparseable"] for c in report["per_axis"].values()) == 3


@pytest.mark.server
@pytest.mark.slow
def test_killed_stage_resumes_from_cache(served_model, tmp_path):
    """Kill `middo refine` mid-run, re-run: fewer teacher calls, same output as an uninterrupted run."""
    _inputs(tmp_path)
    teacher = {
        "backend": "openai",
        "model": served_model.model,
        "base_url": served_model.base_url,
        "max_new_tokens": 48,
        "concurrency": 1,
    }

    def cmd(tag, cache):
        params = tmp_path / f"params_{tag}.yaml"
        params.write_text(yaml.safe_dump({"refine": {"teacher": {**teacher, "cache_dir": str(cache)}}}))
        return [
            sys.executable,
            "-m",
            "middo.cli",
            "refine",
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

    subprocess.run(cmd("full", tmp_path / "cache_full"), check=True, capture_output=True)
    full = json.loads((tmp_path / "full/refine.json").read_text())["refine"]

    cache = tmp_path / "cache_killed"
    proc = subprocess.Popen(
        cmd("killed", cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(cache.rglob("*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(cache.rglob("*.json")), "no teacher call finished before the kill"
    assert not (tmp_path / "killed/data/train.jsonl").exists()  # nothing half-written

    subprocess.run(cmd("killed", cache), check=True, capture_output=True)
    resumed = json.loads((tmp_path / "killed/refine.json").read_text())["refine"]
    assert resumed["cache"]["hits"] >= 1
    assert resumed["cache"]["misses"] < full["cache"]["misses"]
    assert (tmp_path / "killed/data/train.jsonl").read_bytes() == (tmp_path / "full/data/train.jsonl").read_bytes()
