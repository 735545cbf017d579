"""Two "nodes" on 127.0.0.1: the diagnose and evaluate stages run as one torchrun job across two launches.

Each node is its own ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank i`` (static rendezvous at 127.0.0.1), as
``srun torchrun`` starts one per node on a cluster. The outputs must equal a one-process run's, and the per-rank
reports (``MIDDO_RANK_REPORT``) must show that the two nodes split the work: disjoint shares that together cover it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from server_fixtures import free_port
from tiny_models import tiny_model

from middo.dataio import write_jsonl
from middo.distributed import Shard, ShareLog, write_rank_report
from middo.records import Record

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
RECORDS = [
    Record(id=f"s{i}", instruction=f"Question {i}: {q}", output=a)
    for i, (q, a) in enumerate(
        [
            ("What is the capital of France?", "Paris."),
            ("Name three primary colours.", "Red, blue and yellow."),
            ("Translate 'good morning' into German.", "Guten Morgen."),
            ("What is 17 * 3?", "51"),
            ("Give a synonym for 'happy'.", "Joyful."),
            ("Write a Python function that reverses a string.", "def r(s):\n    return s[::-1]"),
            ("Explain photosynthesis in one sentence.", "Plants turn light, water and CO2 into sugar and oxygen."),
            ("List the planets closest to the sun, in order.", "Mercury, Venus, Earth, Mars."),
        ]
    )
]
# stands in for `srun --nodes 2 --ntasks-per-node 1 torchrun ...`: one torchrun per "node", both on this machine
FAKE_SRUN = """#!/usr/bin/env bash
port=$1; shift
pids=()
for node in 0 1; do
    "$PYTHON" -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank $node \\
        --master-addr 127.0.0.1 --master-port "$port" "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _params(tmp_path: Path, processes: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"].update(processes=processes, device="cpu", dtype="float32")
    raw["diagnose"]["max_tokens"] = 64  # a batch or two per sample, so both nodes get work in every phase
    raw["diagnose"]["quality"].update(mode="logits", compare_modes=False)
    raw["eval"].update(backend="builtin", suites=["gsm8k", "hellaswag"], limit=4, max_new_tokens=8)
    path = tmp_path / f"params{processes}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(report: Path, **extra: str) -> dict[str, str]:
    # one thread per process in every run: the same matmul kernels, so outputs can be compared bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    return {**env, "MIDDO_RANK_REPORT": str(report), "PYTHON": sys.executable, **extra}


def _check(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]


def _launch(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reports(folder: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{stage}.rank*.json"))]


def _assert_split(two: list[dict], one: list[dict]) -> None:
    """Two ranks on two nodes, each computed a non-empty, disjoint share; together exactly the one-process work."""
    assert [(r["rank"], r["world"], r["group_rank"], r["local_rank"]) for r in two] == [(0, 2, 0, 0), (1, 2, 1, 0)]
    assert len(one) == 1 and one[0]["world"] == 1
    assert set(two[0]["computed"]) == set(two[1]["computed"]) == set(one[0]["computed"])
    for phase, everything in one[0]["computed"].items():
        a, b = (set(r["computed"][phase]) for r in two)
        assert a and b, (phase, a, b)  # both nodes worked
        assert not a & b, (phase, a & b)  # nothing twice
        assert a | b == set(everything) and len(everything) == len(set(everything)), phase  # nothing left out


def test_rank_report_names_samples_and_their_parts(tmp_path, monkeypatch):
    """Rows merged inside a window map back to sample ids; several rows per sample become ``id#part``."""
    monkeypatch.setenv("MIDDO_RANK_REPORT", str(tmp_path))
    monkeypatch.setenv("GROUP_RANK", "1")
    shard = Shard(1, 2, ShareLog())
    ids = ["a", "b", "c", "d", "e"]
    with shard.part("embed", 3, 2):  # the window holding samples 3 and 4
        shard.log.add_rows(np.array([False, True]))
    with shard.part("quality", 2, 2):  # three judgements per sample
        shard.log.add_rows(np.array([True, False, False, False, False, True]))
    path = write_rank_report("diagnose", shard, ids, device="cpu")
    doc = json.loads(path.read_text())
    assert path.name == "diagnose.rank1.json" and (doc["rank"], doc["world"], doc["group_rank"]) == (1, 2, 1)
    assert doc["computed"] == {"embed": ["e"], "quality": ["c#0", "d#2"]} and doc["counts"]["quality"] == 2
    monkeypatch.delenv("MIDDO_RANK_REPORT")
    assert write_rank_report("diagnose", shard, ids) is None  # nothing asked, nothing written


@pytest.mark.slow
def test_two_nodes_diagnose_like_one_process(base_model_dir, tmp_path):
    """``base.processes: 2`` on each node too: an outer torchrun launch is honoured, not relaunched inside."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    write_jsonl(RECORDS, data)
    outs = {}
    for nodes in (1, 2):
        out = outs[nodes] = tmp_path / f"nodes{nodes}"
        args = [
            str(ROOT / "stages" / "diagnose.py"),
            "--round=1",
            f"--data={data}",
            f"--base={model}",
            f"--current={model}",
            f"--out={out / 'diagnosis'}",
            f"--summary={out / 'diagnose.json'}",
            f"--params={_params(tmp_path, nodes)}",
        ]
        env = _env(out / "ranks")
        if nodes == 1:
            _check([_launch([sys.executable, *args], env)])
        else:
            port = str(free_port())
            node = ["--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
            _check([_launch([*TORCHRUN, *node, f"--node-rank={i}", *args], env) for i in (0, 1)])

    one, two = (pl.read_parquet(outs[n] / "diagnosis" / "scores.parquet") for n in (1, 2))
    assert one["id"].to_list() == [r.id for r in RECORDS]
    assert one["quality"].is_not_nan().all()
    assert one.equals(two, null_equal=True)  # bit-identical, NaN and all
    for name in ("flagged_complexity.jsonl", "flagged_diversity.jsonl", "flagged_quality.jsonl"):
        assert (outs[1] / "diagnosis" / name).read_bytes() == (outs[2] / "diagnosis" / name).read_bytes()
    assert json.loads((outs[1] / "diagnose.json").read_text()) == json.loads((outs[2] / "diagnose.json").read_text())

    two_r, one_r = _reports(outs[2] / "ranks", "diagnose"), _reports(outs[1] / "ranks", "diagnose")
    _assert_split(two_r, one_r)
    assert set(one_r[0]["computed"]["embed"]) == {r.id for r in RECORDS}  # a sample is the unit of embedding
    assert len(one_r[0]["computed"]["quality(logits)"]) > len(RECORDS)  # and a part of a sample for judging


@pytest.mark.slow
def test_two_nodes_evaluate_through_the_launcher(base_model_dir, tmp_path):
    """The stage command as dvc.yaml runs it (plain python), fanned out by ``MIDDO_LAUNCHER`` to two nodes."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    srun = tmp_path / "fake_srun.sh"
    srun.write_text(FAKE_SRUN)
    outs = {}
    for nodes in (1, 2):
        out = outs[nodes] = tmp_path / f"nodes{nodes}"
        cmd = [sys.executable, str(ROOT / "stages" / "evaluate.py"), "--round=1", f"--model={model}"]
        cmd += [f"--out={out / 'eval.json'}", f"--params={_params(tmp_path, 1)}"]
        launcher = {"MIDDO_LAUNCHER": f"bash {srun} {free_port()}"} if nodes == 2 else {}
        _check([_launch(cmd, _env(out / "ranks", **launcher))])

    assert (outs[1] / "eval.json").read_bytes() == (outs[2] / "eval.json").read_bytes()
    assert (outs[1] / "eval_details.jsonl").read_bytes() == (outs[2] / "eval_details.jsonl").read_bytes()
    assert json.loads((outs[2] / "eval.json").read_text())["n"] == {"gsm8k": 4, "hellaswag": 4}
    two_r, one_r = _reports(outs[2] / "ranks", "evaluate"), _reports(outs[1] / "ranks", "evaluate")
    _assert_split(two_r, one_r)
    assert [len(r["computed"]["gsm8k"]) for r in two_r] == [2, 2]  # every other item
