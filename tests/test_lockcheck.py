"""middo verify-lock: a run is compared with the committed dvc.lock output by output."""

import subprocess
import sys

import yaml

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


def test_a_differing_output_is_named_with_the_inputs_that_differ(tmp_path):
    repo = _repo(tmp_path, LOCK)
    run = yaml.safe_load(yaml.safe_dump(LOCK))
    run["stages"]["train_seed"]["outs"][0]["md5"] = "other.dir"
    run["stages"]["import_seed"]["deps"][0]["md5"] = "edited"
    del run["stages"]["import_seed"]["outs"][1]
    (repo / "dvc.lock").write_text(yaml.safe_dump(run))
    out = _verify(repo)
    assert out.returncode == 1
    assert "DIFFERS  models/round_0" in out.stdout
    assert "MISSING  metrics/round_0/import.json" in out.stdout
    assert "src/middo/ingest.py" in out.stdout
    assert "NOT reproduced" in out.stdout


def test_no_run_yet_is_a_clear_error(tmp_path):
    repo = _repo(tmp_path, LOCK)
    (repo / "dvc.lock").unlink()
    out = _verify(repo)
    assert out.returncode == 2
    assert "run `dvc repro` (or `make demo`) first" in out.stderr
