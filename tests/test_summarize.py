import json
from pathlib import Path

import pytest

from middo.errors import MiddoError
from middo.summarize import loss_rows, render_noise, summarize


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _details(path, flags_by_suite):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"suite": s, "id": f"{s}-{i}", "correct": bool(f)}
        for s, flags in flags_by_suite.items()
        for i, f in enumerate(flags)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


INTERVAL = {
    "gsm8k": {"low": 0.0, "high": 0.5},
    "hellaswag": {"low": 0.1, "high": 0.6},
    "average": {"low": 0.1, "high": 0.4},
}


def test_summary_rows_and_plots(tmp_path):
    m = tmp_path / "metrics"
    _write(
        m / "round_0/eval.json", {"accuracy": {"gsm8k": 0.1, "hellaswag": 0.3}, "average": 0.2, "interval": INTERVAL}
    )
    _write(m / "round_0/import.json", {"import": {"kept": 64}})
    _write(m / "round_1/eval.json", {"accuracy": {"gsm8k": 0.2, "hellaswag": 0.4}, "average": 0.3})
    _write(m / "round_1/diagnose.json", {"diagnose": {"flagged": {"complexity": 3, "diversity": 2, "quality": 5}}})
    _write(m / "round_1/refine.json", {"refine": {"size_after": 66, "removed": 8, "added": 2}})
    _write(m / "round_7/eval.json", {"accuracy": {"gsm8k": 0.9}, "average": 0.9})  # stale, not in params
    s = summarize(m, {"1": 0}, tmp_path / "reports/summary.json", tmp_path / "reports/plots", 200, 0)
    assert [r["round"] for r in s["rounds"]] == [0, 1]
    assert [r["dataset_size"] for r in s["rounds"]] == [64, 66]
    assert s["rounds"][0]["interval"] == INTERVAL
    assert s["rounds"][1]["interval"] is None  # an old eval.json without details: nothing to compute it from
    assert s["noise"] == [
        {"from": 0, "to": 1, "skipped": "missing round_0/eval_details.jsonl, round_1/eval_details.jsonl"}
    ]
    plots = tmp_path / "reports/plots"
    assert sorted(p.name for p in (plots / "accuracy").iterdir()) == ["average.json", "gsm8k.json", "hellaswag.json"]
    assert json.loads((plots / "accuracy/average.json").read_text()) == [
        {"round": 0, "accuracy": 0.2, "low": 0.1, "high": 0.4},
        {"round": 1, "accuracy": 0.3},
    ]
    assert {"round": 0, "accuracy": 0.1, "low": 0.0, "high": 0.5} in json.loads(
        (plots / "accuracy/gsm8k.json").read_text()
    )
    assert json.loads((plots / "flags/quality.json").read_text()) == [{"round": 1, "flagged": 5}]
    assert json.loads((plots / "dataset_size.json").read_text()) == [
        {"round": 0, "size": 64},
        {"round": 1, "size": 66},
    ]
    assert (tmp_path / "reports/plots/accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "reports/summary.json").read_text()) == s
    assert not (plots / "train_loss.png").exists()  # no DVCLive curves in these metrics


def test_training_loss_curves_of_every_round_in_one_png(tmp_path):
    m = tmp_path / "metrics"
    for r in (0, 1):
        _write(m / f"round_{r}/eval.json", {"accuracy": {"gsm8k": 0.1}, "average": 0.1})
        tsv = m / f"round_{r}/train/plots/metrics/loss.tsv"
        tsv.parent.mkdir(parents=True)
        tsv.write_text("step\tloss\n1\t2.5\n2\t" + ("1.5" if r else "2.0") + "\n")
    assert loss_rows(m, [0, 1]) == [
        {"step": 1, "loss": 2.5, "round": "round 0"},
        {"step": 2, "loss": 2.0, "round": "round 0"},
        {"step": 1, "loss": 2.5, "round": "round 1"},
        {"step": 2, "loss": 1.5, "round": "round 1"},
    ]
    summarize(m, {"1": 0}, tmp_path / "summary.json", tmp_path / "plots", 200, 0)
    assert (tmp_path / "plots/train_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_noise_follows_the_rounds_params_and_intervals_come_from_details(tmp_path):
    m = tmp_path / "metrics"
    flags = {
        0: {"gsm8k": [0] * 40, "hellaswag": [1, 0] * 20},
        1: {"gsm8k": [1] * 35 + [0] * 5, "hellaswag": [1, 0] * 20},
        2: {"gsm8k": [1] * 35 + [0] * 5, "hellaswag": [0, 1] * 20},
        3: {"gsm8k": [0] * 40, "hellaswag": [1, 0] * 20},
    }
    for r, by_suite in flags.items():
        acc = {s: sum(v) / len(v) for s, v in by_suite.items()}
        _write(m / f"round_{r}/eval.json", {"accuracy": acc, "average": sum(acc.values()) / 2})  # no interval
        _details(m / f"round_{r}/eval_details.jsonl", by_suite)
    rounds = {"1": 0, "3": 0, "2": 1}  # params order, round 3 branches off round 0
    s = summarize(m, rounds, tmp_path / "summary.json", tmp_path / "plots", 500, 42)
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2, 3]
    assert s["rounds"][1]["interval"]["gsm8k"] == {"low": 0.7389, "high": 0.9454}  # Wilson 35/40
    assert set(s["rounds"][1]["interval"]) == {"gsm8k", "hellaswag", "average"}
    assert [(p["from"], p["to"]) for p in s["noise"]] == [(0, 1), (0, 3), (1, 2)]
    first, same, swapped = s["noise"]
    assert first["suites"]["gsm8k"]["verdict"] == "outside noise: B better" and first["suites"]["gsm8k"]["fixed"] == 35
    assert first["suites"]["hellaswag"]["verdict"] == "within noise"
    assert first["average"]["delta"] == pytest.approx(0.4375) and first["unpaired"] == {"only_a": {}, "only_b": {}}
    assert same["average"]["verdict"] == "within noise" and same["average"]["delta"] == 0.0
    # every hellaswag item flips, but as many are fixed as broken: the accuracy did not move
    hs = swapped["suites"]["hellaswag"]
    assert (hs["delta"], hs["fixed"], hs["broken"], hs["p_mcnemar"], hs["verdict"]) == (
        0.0,
        20,
        20,
        1.0,
        "within noise",
    )
    table = render_noise(s["noise"])
    assert table.splitlines()[0] == "| suite | 0 -> 1 | 0 -> 3 | 1 -> 2 |"
    assert "| gsm8k | +0.875 [" in table and "better" in table
    assert (tmp_path / "plots/accuracy.png").read_bytes()[:4] == b"\x89PNG"
    acc_rows = [r for f in (tmp_path / "plots/accuracy").iterdir() for r in json.loads(f.read_text())]
    assert len(acc_rows) == 12 and all({"low", "high"} <= set(r) for r in acc_rows)


def test_missing_round_is_an_error(tmp_path):
    with pytest.raises(MiddoError, match="round_0/eval.json: missing; run `dvc repro` for round 0 first"):
        summarize(tmp_path, {"3": 0}, tmp_path / "s.json", tmp_path / "p", 100, 0)


def test_dvc_draws_each_suite_and_overlays_revisions(tmp_path):
    """Through real DVC: the shipped plot definitions give one plot per suite, each overlaying the revisions."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    m = repo / "metrics"
    for rnd, acc in ((0, {"gsm8k": 0.1, "mmlu": 0.2}), (1, {"gsm8k": 0.3, "mmlu": 0.25})):
        _write(m / f"round_{rnd}/eval.json", {"accuracy": acc, "average": sum(acc.values()) / 2})
    summarize(m, {"1": 0}, repo / "reports/summary.json", repo / "reports/plots", 200, 0)
    plots = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    shown = subprocess.run([dvc, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    data = json.loads(shown.stdout)["data"]
    acc = {k.split("/")[-1]: v[0]["content"]["data"]["values"] for k, v in data.items() if "/accuracy/" in k}
    assert sorted(acc) == ["average.json", "gsm8k.json", "mmlu.json"]
    assert [(r["round"], r["accuracy"], r["rev"]) for r in acc["gsm8k.json"]] == [
        (0, 0.1, "workspace"),
        (1, 0.3, "workspace"),
    ]
    assert "reports/plots/dataset_size.json" in data
