"""The closed loop through real DVC in a temporary git repo: repro, no-op, adding a round, push/pull, S3 (moto)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY = {
    "data": {"limit": 8},
    "diagnose": {"max_tokens": 4096, "quality": {"mode": "logits"}},
    "train": {"max_steps": 2, "batch_size": 4, "max_length": 256, "warmup_ratio": 0.0},
    # 12 new tokens from a 135M teacher: most replies are unusable by design here; the loop, not the data, is tested
    "refine": {"max_failed_fraction": 1.0, "teacher": {"max_new_tokens": 12}},
    "eval": {"suites": ["hellaswag", "gsm8k"], "limit": 2, "max_new_tokens": 16},
    "rounds": {"1": 0, "2": 1},
}


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def dvc(*args: str, cwd: Path, env: dict | None = None) -> str:
    return run([str(BIN / "dvc"), *args], cwd, env)


def git(*args: str, cwd: Path) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd)


def out_hashes(repo: Path) -> dict[str, str]:
    """``{output path: md5}`` for every stage output in dvc.lock (data, checkpoints, scores, metrics, plots), except
    the training metrics, which hold wall time and throughput."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}
    return {path: md5 for path, md5 in outs.items() if not path.endswith("/train.json")}


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e["HF_HUB_OFFLINE"] = "1"
    e["OMP_NUM_THREADS"] = e.get("OMP_NUM_THREADS", "2")
    return e


@pytest.fixture(scope="module")
def project(tmp_path_factory, base_model_dir, env):
    """A fresh git + DVC repo holding this project's pipeline with tiny params and a local remote."""
    repo = tmp_path_factory.mktemp("loop") / "repo"
    repo.mkdir()
    for item in ("dvc.yaml", "stages", "src", "configs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item)
    (repo / "data" / "seed").mkdir(parents=True)
    shutil.copy(ROOT / "data/seed/seed.jsonl", repo / "data/seed/seed.jsonl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from middo.config import deep_merge

    params = deep_merge(params, TINY)
    params["rounds"] = dict(TINY["rounds"])  # replace, not merge: the test adds round 3 itself
    params["model"]["base"] = str(base_model_dir)  # a local folder: copied, no 30 s GGUF conversion per test run
    params["refine"]["teacher"]["cache_dir"] = str(repo.parent / "teacher-cache")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "cache.type", "reflink,hardlink,copy", cwd=repo)
    dvc("remote", "add", "-d", "local", str(repo.parent / "remote"), cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "pipeline", cwd=repo)
    return repo


@pytest.mark.slow
def test_loop_end_to_end(project, env, tmp_path):
    log = dvc("repro", cwd=project, env=env)
    assert {
        "base_model",
        "import_seed",
        "train_seed",
        "evaluate_seed",
        "diagnose@1",
        "refine@1",
        "train@1",
        "evaluate@1",
        "diagnose@2",
        "refine@2",
        "train@2",
        "evaluate@2",
        "summarize",
    } <= ran_stages(log)
    assert (project / "models/round_2/model.safetensors").is_file()
    assert (project / "reports/summary.json").is_file()
    # no pickle anywhere in the outputs: checkpoints are safetensors, data JSONL, scores Parquet, caches JSON
    pickled = [p for ext in ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle") for p in project.rglob(ext)]
    assert [p for p in pickled if ".venv" not in p.parts] == []
    git("add", "-A", cwd=project)
    git("commit", "-qm", "rounds 1-2", cwd=project)

    # a second repro is a no-op
    assert ran_stages(dvc("repro", cwd=project, env=env)) == set()

    # determinism: a forced re-run from scratch (teacher cache emptied too) reproduces every output hash in dvc.lock
    before = out_hashes(project)
    shutil.rmtree(project.parent / "teacher-cache")
    dvc("repro", "--force", cwd=project, env=env)
    assert out_hashes(project) == before

    # adding round 3 runs only round 3's stages (and the summary)
    log = dvc("exp", "run", "-S", "+rounds.3=2", cwd=project, env=env)
    assert ran_stages(log) == {"diagnose@3", "refine@3", "train@3", "evaluate@3", "summarize"}
    dvc("exp", "apply", dvc("exp", "ls", "--name-only", cwd=project).split()[-1], cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "round 3", cwd=project)
    shown = dvc("exp", "show", "--no-pager", "--md", cwd=project, env=env)
    assert "average" in shown

    # push to the local remote, clone, pull: byte-identical data and checkpoints
    dvc("push", cwd=project, env=env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    dvc("pull", cwd=clone, env=env)
    for rel in (
        "data/round_1/train.jsonl",
        "data/round_2/train.jsonl",
        "data/round_3/train.jsonl",
        "models/round_3/model.safetensors",
        "metrics/round_3/diagnosis/scores.parquet",
        "models/base/model.safetensors",
    ):
        assert filecmp.cmp(project / rel, clone / rel, shallow=False), rel

    # the control experiment of docs/evaluation.md: the same loop with random selection, queued and run by DVC's
    # queue, then judged against Middo's round 1 item by item
    dvc("exp", "run", "--queue", "-n", "random-control", "-S", "refine.selection=random", cwd=project, env=env)
    dvc("queue", "start", "--jobs", "1", cwd=project, env=env)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=project, env=env)
        if "random-control" in status and not any(w in status for w in ("Queued", "Running")):
            break
        time.sleep(5)
    assert "Success" in status, status + dvc("queue", "logs", "random-control", cwd=project, env=env)
    from dvc.api import read as dvc_read

    control = json.loads(dvc_read("metrics/round_1/refine.json", repo=str(project), rev="random-control"))
    middo = json.loads((project / "metrics/round_1/refine.json").read_text())
    assert (control["refine"]["selection"], middo["refine"]["selection"]) == ("random", "model")
    assert control["refine"]["diagnosis_flagged"] == {a: c["flagged"] for a, c in middo["refine"]["per_axis"].items()}
    verdict = tmp_path / "compare.json"
    run(
        [
            str(BIN / "middo"),
            "compare",
            "HEAD:metrics/round_1",
            "random-control:metrics/round_1",
            "--json",
            str(verdict),
        ],
        project,
        env,
    )
    judged = json.loads(verdict.read_text())
    assert set(judged["suites"]) == set(TINY["eval"]["suites"]) and "verdict" in judged["average"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_s3_remote_round_trip_through_moto(tmp_path, env):
    pytest.importorskip("dvc_s3")
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        s3env = dict(
            env, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret", AWS_DEFAULT_REGION="us-east-1"
        )
        import boto3

        for _ in range(100):
            try:
                boto3.client(
                    "s3",
                    endpoint_url=f"http://127.0.0.1:{port}",
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing-secret",
                    region_name="us-east-1",
                ).create_bucket(Bucket="middo")
                break
            except Exception:  # noqa: BLE001 - server still starting
                time.sleep(0.1)
        repo = tmp_path / "repo"
        repo.mkdir()
        git("init", "-q", cwd=repo)
        dvc("init", "-q", cwd=repo)
        dvc("remote", "add", "-d", "s3", "s3://middo/cache", cwd=repo)
        dvc("remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{port}", cwd=repo)
        (repo / "data").mkdir()
        (repo / "data/train.jsonl").write_bytes(os.urandom(4096))
        dvc("add", "data/train.jsonl", cwd=repo)
        git("add", "-A", cwd=repo)
        git("commit", "-qm", "data", cwd=repo)
        dvc("push", cwd=repo, env=s3env)
        config = (repo / ".dvc/config").read_text()
        assert "testing-secret" not in config and "access_key" not in config  # credentials only from env
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
        dvc("pull", cwd=clone, env=s3env)
        assert (clone / "data/train.jsonl").read_bytes() == (repo / "data/train.jsonl").read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=10)
