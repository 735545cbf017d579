"""`dvc exp show` and `dvc metrics diff` on the shipped dvc.yaml and params.yaml, with every metrics file of a demo
run written by the writers the stages use, committed as the reference run is: numbers only, a bounded table, and a
diff against the committed reference that works.

Running the demo itself takes minutes (tests/pipeline/test_dvc_loop.py runs the loop); the table only depends on
which files dvc.yaml declares as metrics and what their writers put in them, which this test builds in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from middo.diagnose.run import diagnose_metrics
from middo.evaluate.stats import intervals
from middo.ingest import import_dataset
from middo.provenance import environment, write_metrics
from middo.refine.run import refine_metrics
from middo.summarize import summarize
from middo.teachers.usage import usage_report

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# the experiment table's fixed columns (dvc/repo/experiments/show.py: Experiment, rev, typ, Created, parent, ...)
FIXED = 7
# the demo (2 rounds, 7 suites) has 222 metric columns: import 6, train 11 a round, eval 31 a round (accuracy, n and
# interval per suite, the average and its interval), diagnose 13, refine 32 (12 + the teacher's usage); before the
# env records moved out and the breakdowns went to the stages' folders it had 318, a third of them strings
METRIC_COLUMNS = 230
TABLE_COLUMNS = 385  # with params.yaml's keys (98) and the stages' deps (48): DVC shows a column for each


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True)


def _eval(path: Path, suites: list[str], right: int, n: int = 4) -> None:
    """What evaluate writes (middo.evaluate.suite.evaluate_model): accuracy, average, n and intervals per suite."""
    correct = {s: [i < right for i in range(n)] for s in suites}
    accuracy = {s: sum(c) / n for s, c in correct.items()}
    metrics = {
        "accuracy": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "n": {s: n for s in suites},
        "interval": intervals(correct, 200, 42),
    }
    write_metrics(path, metrics, environment("cpu", "float32"))


def _train(path: Path, live_dir: Path) -> None:
    """What train writes: its scalars (middo.train.train_model) and DVCLive's curves (LiveCurves, driven as TRL
    drives it)."""
    from middo.train import LiveCurves

    scalars = {
        "samples": 32, "dropped_fully_truncated": 0, "processes": 1, "effective_batch_size": 4, "steps": 8,
        "train_loss": 1.6, "first_loss": 1.76, "last_loss": 1.68, "seconds": 38.9, "tokens_seen": 2895,
        "tokens_per_second": 74.4,
    }  # fmt: skip
    write_metrics(path, {"train": scalars}, environment("cpu", "float32"))
    live = LiveCurves(live_dir)
    live.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    for step in (1, 2):
        logs = {"loss": 1.8 / step, "learning_rate": 1e-4, "num_tokens": 700 * step}
        live.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
    live.on_train_end(None, None, None)


def _diagnose(path: Path) -> None:
    threshold = {"mean": 1.4, "std": 0.9, "m": 1.0, "value": 2.3, "direction": "above"}
    summary = {
        "n": 32,
        "flagged": {"complexity": 4, "diversity": 4, "quality": 4, "any": 10, "multiple": 2},
        "unscored": {"loss_base": 0, "loss_current": 0, "quality": 0},
        "thresholds": {name: threshold for name in ("loss_base", "loss_current", "knn_sim", "quality")},
        "quality": {"mode": "logits", "status": {"ok": 192}, "unparseable": 0},
        "k": 2,
    }
    write_metrics(path, {"diagnose": diagnose_metrics(summary)}, environment("cpu", "float32"))


def _refine(path: Path) -> None:
    axis = {"flagged": 4, "asked": 4, "added": 1, "unusable": 3, "duplicate": 0}
    report = {
        "round": 1, "selection": "model", "merge": "reference", "size_before": 32, "removed": 2,
        "removed_by": {"complexity": 1, "quality": 1}, "added": 3,
        "added_by_axis": {"complexity": 1, "diversity": 1, "quality": 1}, "kept": 30, "size_after": 33,
        "asked": 12, "unusable": 9, "unusable_by": {"failed": 0, "unparseable": 7, "rejected": 2}, "duplicate": 0,
        "rejected": {"instruction too short": 1, "a reason only this run had": 1},
        "per_axis": dict.fromkeys(("complexity", "diversity", "quality"), axis), "overlaps": {"complexity+quality": 1},
        "reply_status": {"rejected": 2, "unparseable": 7, "ok": 3}, "diversify_without_hints": 0, "teacher_calls": 12,
        # every operation rewrites, and diversify's new prompts are answered: a step each in the usage report
        "teacher_usage": usage_report(
            [(op, "rewrite", None) for op in ("simplify", "improve", "diversify")] + [("diversify", "answer", None)],
            1,
            None,
        ),
    }  # fmt: skip
    write_metrics(path, {"refine": refine_metrics(report)}, environment("cpu", "float32"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A git + DVC repo with the shipped dvc.yaml and params.yaml and a demo run's metrics, committed."""
    repo = tmp_path_factory.mktemp("demo")
    _git(repo, "init", "-q")
    assert _dvc(repo, "init", "-q").returncode == 0
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    m = repo / "metrics"
    import_dataset(ROOT / params["data"]["seed_path"], repo / "data/round_0", m / "round_0/import.json", "auto",
                   "train", params["data"]["limit"])  # fmt: skip
    for r in [0, *map(int, params["rounds"])]:
        _train(m / f"round_{r}/train.json", m / f"round_{r}/train")
        _eval(m / f"round_{r}/eval.json", params["eval"]["suites"], right=1 + r % 3)
        if r:
            _diagnose(m / f"round_{r}/diagnose.json")
            _refine(m / f"round_{r}/refine.json")
    summarize(m, params["rounds"], repo / "reports/summary.json", repo / "reports/plots", 200, 42)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the reference run's metrics")
    return repo


def _leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]


@pytest.mark.slow  # DVC and DVCLive subprocesses, about 15 s
def test_the_experiment_table_holds_numbers_in_a_bounded_number_of_columns(demo):
    out = _dvc(demo, "exp", "show", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["rev"]: row for row in json.loads(out.stdout)}
    data = rows["workspace"]["data"]
    metrics = {path: _leaves(v["data"]) for path, v in data["metrics"].items()}
    assert not [p for p, v in data["metrics"].items() if v.get("error")]
    bad = {p: [x for x in values if type(x) not in (int, float)] for p, values in metrics.items()}
    assert not {p: x for p, x in bad.items() if x}, "every metric is a number (no env, no strings, no lists)"
    assert not any("/env/" in p or p.endswith("train/metrics.json") for p in metrics)
    n_metrics = sum(map(len, metrics.values()))
    n_table = FIXED + n_metrics + len(_leaves(data["params"])) + len(data["deps"])
    assert n_metrics <= METRIC_COLUMNS, n_metrics
    assert n_table <= TABLE_COLUMNS, n_table
    # the reference row (HEAD) is read from git: no '!' in it
    head = next(row for rev, row in rows.items() if rev != "workspace")
    assert not head.get("error") and {p: _leaves(v["data"]) for p, v in head["data"]["metrics"].items()} == metrics


@pytest.mark.slow
def test_metrics_diff_compares_a_new_run_with_the_committed_reference(demo, tmp_path):
    repo = tmp_path / "run"
    shutil.copytree(demo, repo)
    suites = yaml.safe_load((repo / "params.yaml").read_text())["eval"]["suites"]
    _eval(repo / "metrics/round_2/eval.json", suites, right=4)
    out = _dvc(repo, "metrics", "diff", "HEAD", "--json")
    assert out.returncode == 0, out.stderr
    diff = json.loads(out.stdout)
    assert set(diff) == {"metrics/round_2/eval.json"}, diff  # only what changed, nothing failing to load
    assert diff["metrics/round_2/eval.json"]["average"] == {"old": 0.75, "new": 1.0, "diff": 0.25}
    # the view for comparing runs: only the columns whose values differ, here round 2's accuracies and intervals
    table = _dvc(repo, "exp", "show", "--csv", "--only-changed")
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split(",")
    assert header[:2] == ["rev", "Created"]
    assert all(c.startswith("metrics/round_2/eval.json:") for c in header[2:]), header
    assert len(header[2:]) == 3 * len(suites) + 3  # accuracy, interval low and high per suite; the average's three


@pytest.mark.slow
def test_middo_exp_reads_each_experiment_round_by_round_in_a_terminal_wide_table(demo, tmp_path):
    repo = tmp_path / "exp"
    shutil.copytree(demo, repo)
    # `dvc exp save` commits the pipeline's outputs, which the fixture has not: the same params and metrics files
    # declared at the top level of a dvc.yaml without stages
    files = sorted(str(p.relative_to(repo)) for p in repo.glob("metrics/round_*/*.json"))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"params": ["params.yaml"], "metrics": files}))
    _git(repo, "commit", "-qam", "no stages")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    suites = params["eval"]["suites"]
    params["refine"]["merge"] = "model"
    params["base"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _eval(repo / "metrics/round_2/eval.json", suites, right=4)
    saved = _dvc(repo, "exp", "save", "-n", "tweaked")
    assert saved.returncode == 0, saved.stderr
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "middo", "exp"], cwd=repo, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    print(out.stdout)
    assert lines[0].split() == ["experiment", "round", "samples", "flagged", "train", "loss", "average", "95%", "low",
                                "95%", "high", "params", "changed"]  # fmt: skip
    assert max(map(len, lines)) <= 120  # a terminal's width, where `dvc exp show` is 17,000 characters wide
    blocks: dict[str, list[list[str]]] = {}  # each row's lines, split into cells
    for line in lines[2:]:
        if not line.startswith(" "):
            name = line.split("  ")[0]
            blocks[name] = []
            line = line[len(name) :]
        blocks[name].append(line.split())
    assert list(blocks)[0] == "workspace" and len(blocks) == 3, list(blocks)
    exp = next(name for name in blocks if name.endswith("[tweaked]"))
    base = next(name for name in blocks if name not in ("workspace", exp))
    # round, samples, flagged, train loss, average, 95% low, 95% high (from the files the demo fixture wrote)
    assert [row[:7] for row in blocks[base]] == [
        ["0", "32", "-", "1.6", "0.25", *blocks[base][0][5:7]],
        ["1", "32", "10", "1.6", "0.5", *blocks[base][1][5:7]],
        ["2", "32", "10", "1.6", "0.75", *blocks[base][2][5:7]],
    ]
    low, high = (float(x) for x in blocks[base][2][5:7])
    assert low < 0.75 < high
    assert blocks[exp][2][4] == "1"  # round 2's average in the experiment
    # the experiment names the params it changed, one a line; the commit row compares with nothing
    assert [row[7:] for row in blocks[exp]] == [["base.seed=7"], ['refine.merge="model"'], []]
    assert all(len(row) == 7 for row in blocks[base])
    # the workspace, still holding the changes, against HEAD
    assert [row[7:] for row in blocks["workspace"]] == [["base.seed=7"], ['refine.merge="model"'], []]
