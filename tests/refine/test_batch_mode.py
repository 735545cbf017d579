"""``refine.teacher.mode: batch``: the refine stage through a scripted OpenAI Batch API server on 127.0.0.1, from
submit through pending to completed (the rewrite batch, then the answer batch), with a refused request, an expired
batch, and a run killed while it collects; compared with the same teacher answering online."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from batch_server import BatchPlan, start
from scripted_teacher import script
from test_refine_stage import ROOT, _assert_counts_add_up, _inputs, _openai, _refine

from middo.config import ConfigError, TeacherConfig, params_from_dict
from middo.dataio import read_dataset
from middo.errors import MiddoError
from middo.teachers.base import Sampling
from middo.teachers.cache import server_identity
from middo.teachers.openai_backend import OpenAITeacher
from middo.teachers.openai_batch import BatchPending, BatchTeacher

REFUSED = {("improve", "capitl of france"): None}  # poor's improve rewrite is refused (an error-file line)


@pytest.fixture
def batch_server():
    servers = []

    def make(reply, plans=None):
        servers.append(start(reply, plans))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _batch(server, tmp_path, **kwargs) -> TeacherConfig:
    return replace(_openai(server, tmp_path), mode="batch", **kwargs)


def _entries(cache: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in cache.glob("??/*.json")}


def test_a_batch_round_goes_submit_pending_completed_and_equals_the_online_round(batch_server, chat_server, tmp_path):
    _inputs(tmp_path)
    server = batch_server(script(REFUSED), [BatchPlan(("in_progress", "completed")), BatchPlan(("completed",))])
    cfg = _batch(server, tmp_path)

    with pytest.raises(BatchPending, match=r"^batch submitted, 3 requests \(batch_1\); run `dvc repro` again"):
        _refine(tmp_path, cfg)
    assert not (tmp_path / "run").exists()  # nothing written: DVC records nothing
    folder = tmp_path / "cache/batches/round_1"
    record = json.loads((folder / "batch_1.json").read_text())
    assert record["round"] == 1 and record["keys"] == server.received  # the custom_ids are the cache keys
    assert [line["method"] for line in server.uploads[0]] == ["POST"] * 3
    assert {line["url"] for line in server.uploads[0]} == {"/v1/chat/completions"}

    with pytest.raises(BatchPending, match=r"^batch batch_1 is in_progress; run again later$"):
        _refine(tmp_path, cfg)
    assert len(server.uploads) == 1 and not (tmp_path / "run").exists()

    with pytest.raises(
        BatchPending, match=r"^batch submitted, 2 requests \(batch_2\); run `dvc repro` again to collect$"
    ):
        _refine(tmp_path, cfg)  # the rewrites collected (one refused), the answers to the two good ones sent
    report, out, metrics = _refine(tmp_path, cfg)

    assert len(server.received) == len(set(server.received)) == 5  # no request sent twice
    _assert_counts_add_up(report, out)
    assert report["unusable_by"]["failed"] == 1 and (report["asked"], report["added"]) == (3, 2)
    changes = {c["parent_id"]: c for c in map(json.loads, (metrics / "changes.jsonl").read_text().splitlines())}
    assert changes["poor"]["status"].startswith("failed") and changes["poor"]["result"] == "kept_original"
    # usage comes from each output line's response.body.usage, stored in the cache entry
    entries = _entries(tmp_path / "cache")
    sent = {line["custom_id"]: line["body"]["messages"][-1]["content"] for lines in server.uploads for line in lines}
    assert len(entries) == 4 and entries.keys() <= sent.keys()  # entries are named by their key: custom_id is it
    for key, entry in entries.items():
        assert entry["usage"]["prompt_tokens"] == len(sent[key].split())
        assert entry["usage"]["completion_tokens"] == len(entry["output"].split())

    online = chat_server(script(REFUSED))
    cfg_online = replace(_openai(online, tmp_path), cache_dir=str(tmp_path / "cache_online"))
    report_online, out_online, _ = _refine(tmp_path, cfg_online, tag="online")
    assert out == out_online  # the same data, request for request
    assert {k: report[k] for k in ("asked", "added", "removed", "unusable_by")} == {
        k: report_online[k] for k in ("asked", "added", "removed", "unusable_by")
    }
    # each batch line's body is exactly what online mode POSTed for the same prompt
    by_prompt = {post["messages"][-1]["content"]: post for post in online.posts}
    bodies = [line["body"] for lines in server.uploads for line in lines]
    assert len(online.posts) == 5 and all(body == by_prompt[body["messages"][-1]["content"]] for body in bodies)


def test_an_expired_batch_fails_its_unfinished_requests_and_a_cleared_folder_resends_them(batch_server, tmp_path):
    _inputs(tmp_path)
    plans = [BatchPlan(("expired",), processed=1), BatchPlan(("completed",))] + [BatchPlan(("completed",))] * 2
    server = batch_server(script(), plans)
    cfg = _batch(server, tmp_path)
    with pytest.raises(BatchPending, match="batch submitted, 3 requests"):
        _refine(tmp_path, cfg)
    with pytest.raises(BatchPending, match=r"batch submitted, 1 request \(batch_2\)"):
        _refine(tmp_path, cfg)  # one rewrite ran before the batch expired; its answer is sent
    folder = tmp_path / "cache/batches/round_1"
    with pytest.raises(MiddoError, match=r"round 1: 2 of 3 teacher replies unusable .*: 2 failed") as err:
        _refine(tmp_path, cfg)
    assert f"delete {folder} to send them again" in str(err.value)
    assert not (tmp_path / "run").exists()
    assert json.loads((folder / "batch_1.json").read_text())["request_counts"] == {
        "total": 3,
        "completed": 1,
        "failed": 2,
    }
    with pytest.raises(MiddoError, match="2 of 3 teacher replies unusable"):
        _refine(tmp_path, cfg)  # the expired requests stay failed this round: nothing is sent again
    assert len(server.received) == 4

    shutil.rmtree(folder)
    with pytest.raises(BatchPending, match="batch submitted, 2 requests"):
        _refine(tmp_path, cfg)  # only the two that expired: the rest is in the cache
    with pytest.raises(BatchPending, match="batch submitted, 2 requests"):
        _refine(tmp_path, cfg)
    report, out, _ = _refine(tmp_path, cfg)
    assert (report["asked"], report["unusable"], report["added"]) == (3, 0, 3)
    assert len(server.received) == 8 and len(set(server.received)) == 6  # the two expired ones, sent twice


def test_misses_over_the_request_limit_go_in_several_batches(batch_server, tmp_path):
    server = batch_server(lambda prompt: f"reply to {prompt}", [BatchPlan(("completed",))] * 2)
    teacher = OpenAITeacher(server.base_url, "m", max_retries=0)
    identity = server_identity("m", server.base_url, "")
    batch = BatchTeacher(teacher, tmp_path / "cache", identity, "v1", round_=1, max_requests=2)
    prompts = ["a", "b", "c"]
    with pytest.raises(BatchPending, match=r"batch submitted, 3 requests \(batch_1, batch_2\)"):
        batch.complete(prompts, Sampling())
    assert [len(lines) for lines in server.uploads] == [2, 1]
    assert batch.complete(prompts, Sampling()) == ["reply to a", "reply to b", "reply to c"]
    assert batch.complete(prompts, Sampling()) == ["reply to a", "reply to b", "reply to c"]  # from the cache
    assert len(server.received) == 3 and (batch.hits, batch.misses) == (3, 3)


def test_batch_mode_is_for_the_openai_backend_only():
    with pytest.raises(ConfigError, match=r"refine.teacher: mode: 'batch' .* needs backend 'openai'"):
        params_from_dict({"refine": {"teacher": {"mode": "batch"}}})
    with pytest.raises(ConfigError, match=r"refine.teacher.mode: must be one of 'online', 'batch'"):
        params_from_dict({"refine": {"teacher": {"backend": "openai", "mode": "offline"}}})
    assert params_from_dict({"refine": {"teacher": {"backend": "openai", "mode": "batch"}}}).refine.teacher.mode


@pytest.mark.slow
def test_the_stage_exits_nonzero_until_collected_and_a_killed_collect_resends_nothing(batch_server, tmp_path):
    """The real stage script: each submit and each pending poll exits 2 with its message (DVC records nothing); a
    run killed while downloading the results is rerun, downloads again, and sends no request twice."""
    _inputs(tmp_path)
    server = batch_server(script(), [BatchPlan(("in_progress", "completed")), BatchPlan(("completed",))])
    params = tmp_path / "params.yaml"
    teacher = {"backend": "openai", "model": "m", "base_url": server.base_url, "mode": "batch"}
    params.write_text(yaml.safe_dump({"refine": {"teacher": {**teacher, "cache_dir": str(tmp_path / "cache")}}}))
    cmd = [sys.executable, str(ROOT / "stages/refine.py"), "--params", str(params), "--round", "1"]
    cmd += ["--data", str(tmp_path / "data/train.jsonl"), "--diagnosis", str(tmp_path / "diagnosis")]
    cmd += ["--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m"), "--summary", str(tmp_path / "r.json")]

    def stage() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    first = stage()
    assert first.returncode == 2
    assert "refine: error: batch submitted, 3 requests (batch_1); run `dvc repro` again to collect" in first.stderr
    pending = stage()
    assert pending.returncode == 2 and "refine: error: batch batch_1 is in_progress; run again later" in pending.stderr

    server.hold_download = 30.0  # the next run hangs in the download of the rewrite batch's results: kill it there
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(path.endswith("/content") for path in server.gets) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(path.endswith("/content") for path in server.gets), "the run never reached the download"
    assert not (tmp_path / "cache/batches/round_1/batch_1.output.jsonl").exists()  # killed mid-download

    collect = stage()
    assert collect.returncode == 2 and "batch submitted, 3 requests (batch_2)" in collect.stderr
    done = stage()
    assert done.returncode == 0, done.stderr
    assert len(server.received) == len(set(server.received)) == 6  # three rewrites, three answers, each once
    assert len(read_dataset(tmp_path / "out/train.jsonl").records) == 10 - 2 + 3
    assert json.loads((tmp_path / "r.json").read_text())["refine"]["added"] == 3
