"""middo verify-lock: a run is compared with the committed dvc.lock output by output."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent

LOCK = {
    "schema": "2.0",
    "stages": {
        "import_seed": {
            "deps": [{"path": "src/middo/ingest.py", "md5": "d1"}],
            "outs": [{"path": "data/round_0", "md5": "a.dir"}, {"path": "metrics/round_0/import.json", "md5": "b"}],
        },
        "train_seed": {
            "deps": [{"path": "data/round_0", "md5": "a.dir"}],
            "outs": [{"path": "models/round_0", "md5": "c.dir"}, {"path": "metrics/round_0/train.json", "md5": "t"}],
        },
    },
}


def _repo(tmp_path, lock):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "dvc.lock"], check=True)
    subprocess.run([*git, "commit", "-qm", "reference run"], check=True)
    return tmp_path


def _verify(repo):
    cmd = [sys.executable, "-m", "middo.cli", "verify-lock", "--repo", str(repo)]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_an_identical_run_is_reproduced_and_wall_clock_metrics_are_skipped(tmp_path):
    repo = _repo(tmp_path, LOCK)
    run = yaml.safe_load(yaml.safe_dump(LOCK))
    run["stages"]["train_seed"]["outs"][1]["md5"] = "another wall time"
    (repo / "dvc.lock").write_text(yaml.safe_dump(run))
    out = _verify(repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 outputs identical" in out.stdout
    assert "skipped  metrics/round_0/train.json (wall-clock time" in out.stdout
    assert out.stdout.rstrip().endswith("reproduced")


def test_a_missing_output_and_a_difference_without_env_records_are_not_reproduced(tmp_path):
    repo = _repo(tmp_path, LOCK)
    run = yaml.safe_load(yaml.safe_dump(LOCK))
    run["stages"]["train_seed"]["outs"][0]["md5"] = "other.dir"
    del run["stages"]["import_seed"]["outs"][1]
    (repo / "dvc.lock").write_text(yaml.safe_dump(run))
    out = _verify(repo)
    assert out.returncode == 1
    assert "DIFFERS  models/round_0  (train_seed: no env record)" in out.stdout
    assert "MISSING  metrics/round_0/import.json" in out.stdout
    assert "first stage that differs: train_seed: its inputs are identical to the reference's; no env record" in (
        out.stdout
    )
    assert out.stdout.splitlines()[-1].startswith("NOT reproduced: train_seed")


def test_no_run_yet_is_a_clear_error(tmp_path):
    repo = _repo(tmp_path, LOCK)
    (repo / "dvc.lock").unlink()
    out = _verify(repo)
    assert out.returncode == 2
    assert "run `dvc repro` (or `make demo`) first" in out.stderr


# ---- the verdicts on a real DVC pipeline in a temporary git repo: prepare -> train -> evaluate ----
# `train`'s result depends on the dtype it ran in (TEST_DTYPE, as middo's depends on what base.dtype: auto resolves
# to on a CPU); every stage writes its metrics and env record through middo.provenance.write_metrics, as middo's do.

STEP = """
import os, sys
import yaml
from middo.provenance import environment, write_metrics

stage, src, dst = sys.argv[1:]
text = open(src).read()
dtype = os.environ.get("TEST_DTYPE", "bfloat16")
if stage == "prepare":
    text = text * yaml.safe_load(open("params.yaml"))["scale"]
elif stage == "train":  # a different dtype rounds differently; TEST_NOISE is a bug: a result no input explains
    text = f"{text.upper()} trained in {dtype}{os.environ.get('TEST_NOISE', '')}"
open(dst, "w").write(text)
model_dtype = dtype if stage != "prepare" else "n/a"
write_metrics(f"metrics/{stage}.json", {stage: {"size": len(text)}}, environment("cpu", model_dtype))
"""

PARAMS_READ = {"prepare": ["scale"], "train": ["base.dtype"]}  # train reads base.dtype, as middo's model stages do
PIPELINE = {
    "stages": {
        name: {
            "cmd": f"python step.py {name} {src} {dst}",
            "deps": ["step.py", src],
            **({"params": PARAMS_READ[name]} if name in PARAMS_READ else {}),
            "outs": [dst, {f"metrics/env/{name}.json": {"cache": False}}],
            "metrics": [{f"metrics/{name}.json": {"cache": False}}],
        }
        for name, src, dst in (
            ("prepare", "seed.txt", "data.txt"),
            ("train", "data.txt", "model.txt"),
            ("evaluate", "model.txt", "score.txt"),
        )  # fmt: skip
    }
}


PARAMS = "scale: 2\nbase:\n  dtype: auto\n"


def _run(repo: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=full)
    assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The reference run, committed as the lead commits `make demo`'s: dvc.lock with the metrics and env records."""
    repo = tmp_path_factory.mktemp("reference")
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    (repo / "step.py").write_text(STEP)
    (repo / "seed.txt").write_text("seed ")
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    _run(repo, "dvc", "repro", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reference run")
    assert not _run(repo, "git", "status", "--porcelain").stdout  # the env records are committed, nothing left
    return repo


def _rerun(reference: Path, tmp_path: Path, **env: str) -> Path:
    repo = tmp_path / "clone"
    shutil.copytree(reference, repo, symlinks=True)
    _run(repo, "dvc", "repro", "-q", "-f", **env)
    return repo


@pytest.mark.slow  # a real DVC pipeline run twice (about 10 s)
def test_a_rerun_on_the_same_machine_is_reproduced(reference, tmp_path):
    out = _verify(_rerun(reference, tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == ["dvc.lock at HEAD vs this workspace: 6 outputs identical, 0 differ, 0 missing",
                                       "reproduced"]  # fmt: skip


@pytest.mark.slow
def test_another_dtype_differs_only_where_the_machine_differs_and_another_library_does_not(reference, tmp_path):
    repo = _rerun(reference, tmp_path, TEST_DTYPE="float32")
    out = _verify(repo)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "dvc.lock at HEAD vs this workspace: 2 outputs identical, 4 differ, 0 missing"
    assert lines[1] == (
        "first stage that differs: train: its inputs are identical to the reference's; the machine differs "
        "(dtype bfloat16 in the reference, float32 here): a kernel or dtype difference, not the code's"
    )
    assert "  DIFFERS  model.txt  (train: machine)" in lines
    assert "  DIFFERS  score.txt  (evaluate: upstream)" in lines
    assert lines[-1].startswith("differs only where the machine differs (train: dtype bfloat16 in the reference")

    env = json.loads((repo / "metrics/env/train.json").read_text())
    (repo / "metrics/env/train.json").write_text(json.dumps({**env, "torch": "0.0.1"}))
    out = _verify(repo)
    assert out.returncode == 1
    assert (
        f"library versions differ (torch {env['torch']} in the reference, 0.0.1 here)" in out.stdout.splitlines()[-1]
    )


@pytest.mark.slow
def test_an_edited_param_is_named_as_the_cause_and_not_reproduced(reference, tmp_path):
    repo = tmp_path / "clone"
    shutil.copytree(reference, repo, symlinks=True)
    (repo / "params.yaml").write_text(PARAMS.replace("scale: 2", "scale: 3"))
    _run(repo, "dvc", "repro", "-q")
    out = _verify(repo)
    assert out.returncode == 1
    assert "first stage that differs: prepare: its inputs differ from the reference's: param scale" in out.stdout
    assert "  DIFFERS  model.txt  (train: upstream)" in out.stdout.splitlines()
    assert out.stdout.splitlines()[-1].startswith("NOT reproduced: prepare: its inputs differ")


@pytest.mark.slow
def test_a_difference_with_identical_inputs_and_env_is_not_reproduced(reference, tmp_path):
    out = _verify(_rerun(reference, tmp_path, TEST_NOISE="!"))
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == (
        "NOT reproduced: train: its inputs are identical to the reference's and so is its env: the stage is not "
        "deterministic (a bug)"
    )


@pytest.mark.slow
def test_base_dtype_set_where_the_reference_ran_auto_is_judged_by_what_the_env_record_says_it_resolved_to(
    reference, tmp_path
):
    # base.dtype: float32 on a bfloat16 CPU is how docs/reproducibility.md compares across CPU types: the setting is
    # not an edited input, the env record says what it resolved to (float32 here, bfloat16 in the reference)
    repo = tmp_path / "clone"
    shutil.copytree(reference, repo, symlinks=True)
    (repo / "params.yaml").write_text(PARAMS.replace("dtype: auto", "dtype: float32"))
    _run(repo, "dvc", "repro", "-q", TEST_DTYPE="float32")
    out = _verify(repo)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == (
        "first stage that differs: train: its inputs are identical to the reference's but for the machine settings "
        "(base.dtype auto in the reference, float32 here); the machine differs (dtype bfloat16 in the reference, "
        "float32 here): a kernel or dtype difference, not the code's"
    )
    assert lines[-1].startswith("differs only where the machine differs (train: dtype bfloat16 in the reference")

    # the setting excuses only what the env record explains: the same env and another result is still a bug
    _run(repo, "dvc", "repro", "-q", "-f", "train", TEST_NOISE="!")  # float32 set, bfloat16 run: env as the reference
    out = _verify(repo)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == (
        "NOT reproduced: train: its inputs are identical to the reference's but for the machine settings "
        "(base.dtype auto in the reference, float32 here) and so is its env: the stage is not deterministic (a bug)"
    )
