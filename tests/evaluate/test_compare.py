import json
import subprocess
import sys
from pathlib import Path

import pytest

from middo.cli import main
from middo.errors import MiddoError
from middo.evaluate.compare import compare_results, load_details, parse_details, render, verdict


def _rows(suite, flags, start=0):
    return [{"suite": suite, "id": f"{suite}-{i}", "correct": bool(f)} for i, f in enumerate(flags, start)]


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


A = _rows("gsm8k", [1, 0] * 25) + _rows("hellaswag", [0] * 40 + [1] * 10)
FIXED = _rows("gsm8k", [1, 0] * 25) + _rows("hellaswag", [1] * 40 + [1] * 10)  # B gets the 40 items A missed


def test_identical_results_are_within_noise():
    res = compare_results(A, A, 1000, 42)
    for row in [*res["suites"].values(), res["average"]]:
        assert (row["delta"], row["low"], row["high"]) == (0.0, 0.0, 0.0)
        assert (row["fixed"], row["broken"], row["p_mcnemar"]) == (0, 0, 1.0)
        assert row["verdict"] == "within noise"
    assert res["suites"]["gsm8k"]["accuracy_a"] == res["suites"]["gsm8k"]["accuracy_b"] == 0.5
    assert res["unpaired"] == {"only_a": {}, "only_b": {}}


def test_fixing_40_of_50_items_is_outside_noise():
    res = compare_results(A, FIXED, 1000, 42)
    hs = res["suites"]["hellaswag"]
    assert (hs["n"], hs["accuracy_a"], hs["accuracy_b"], hs["delta"]) == (50, 0.2, 1.0, 0.8)
    assert (hs["fixed"], hs["broken"]) == (40, 0)
    assert hs["p_mcnemar"] < 0.001
    assert 0 < hs["low"] <= 0.8 <= hs["high"]
    assert hs["verdict"] == "outside noise: B better"
    assert res["suites"]["gsm8k"]["verdict"] == "within noise"
    avg = res["average"]
    assert avg["delta"] == pytest.approx(0.4) and avg["low"] > 0 and avg["verdict"] == "outside noise: B better"
    assert (avg["n"], avg["fixed"], avg["p_mcnemar"] < 0.001) == (100, 40, True)
    # the other way round it is A that is better, with the same evidence
    back = compare_results(FIXED, A, 1000, 42)["suites"]["hellaswag"]
    assert back["verdict"] == "outside noise: A better" and back["broken"] == 40 and back["high"] < 0


def test_bootstrap_is_seeded():
    noisy = _rows("gsm8k", [1, 1, 0, 0, 1] * 10) + _rows("hellaswag", [0] * 35 + [1] * 15)
    assert compare_results(A, noisy, 500, 1) == compare_results(A, noisy, 500, 1)
    assert compare_results(A, noisy, 500, 1)["average"] != compare_results(A, noisy, 500, 2)["average"]


def test_verdict_needs_the_interval_to_exclude_zero():
    assert verdict(0.01, 0.2) == "outside noise: B better"
    assert verdict(-0.3, -0.001) == "outside noise: A better"
    assert verdict(0.0, 0.2) == verdict(-0.1, 0.1) == "within noise"


def test_unpaired_items_are_reported_and_left_out():
    b = [r for r in A if r["id"] != "gsm8k-0"] + [{"suite": "gsm8k", "id": "gsm8k-new", "correct": True}]
    res = compare_results(A, b, 200, 0)
    assert res["unpaired"] == {"only_a": {"gsm8k": ["gsm8k-0"]}, "only_b": {"gsm8k": ["gsm8k-new"]}}
    assert res["suites"]["gsm8k"]["n"] == 49 and res["suites"]["hellaswag"]["n"] == 50
    text = render(res, "round_0", "round_1")
    assert "unpaired, only in A: gsm8k: gsm8k-0" in text and "unpaired, only in B: gsm8k: gsm8k-new" in text


def test_a_suite_without_common_items_is_refused():
    b = A[:50] + _rows("mmlu", [1, 0])
    with pytest.raises(MiddoError, match=r"suite hellaswag: no items in common \(A has 50, B has 0\); suite mmlu"):
        compare_results(A, b, 100, 0)
    with pytest.raises(MiddoError, match="gsm8k/gsm8k-0 appears twice"):
        compare_results(A + A[:1], A, 100, 0)


def test_render_is_a_markdown_table():
    text = render(compare_results(A, FIXED, 300, 0), "a.jsonl", "b.jsonl")
    lines = text.splitlines()
    assert lines[:2] == ["A: a.jsonl", "B: b.jsonl"]
    assert lines[3].startswith("| suite | n | A | B | B - A | 95% interval |")
    assert any(ln.startswith("| hellaswag | 50 | 0.200 | 1.000 | +0.800 |") for ln in lines)
    assert any(ln.startswith("| average | 100 |") and "outside noise: B better" in ln for ln in lines)


def test_malformed_details_name_file_and_line(tmp_path):
    text = '{"suite": "s", "id": 1, "correct": true}\nnot json\n{"suite": "s", "id": 2, "correct": 1}\n{"id": 3}\n'
    with pytest.raises(MiddoError) as err:
        parse_details(text, "x.jsonl")
    assert "x.jsonl:2: not JSON" in str(err.value)
    assert "x.jsonl:3: 'correct' must be true or false, got 1" in str(err.value)
    assert "x.jsonl:4: expected an object with 'suite'" in str(err.value)
    with pytest.raises(MiddoError, match="no per-item results"):
        parse_details("\n", "empty.jsonl")


def test_load_details_from_file_or_round_folder(tmp_path):
    path = _write(tmp_path / "metrics/round_1/eval_details.jsonl", A)
    assert load_details(str(path)) == A
    assert load_details("metrics/round_1", repo=tmp_path) == A
    with pytest.raises(MiddoError, match="round_2/eval_details.jsonl: no such evaluation details file"):
        load_details("metrics/round_2", repo=tmp_path)


def test_cli_compare_prints_and_writes_json(tmp_path, capsys):
    a = _write(tmp_path / "a/eval_details.jsonl", A)
    b = _write(tmp_path / "b/eval_details.jsonl", FIXED)
    out = tmp_path / "cmp.json"
    args = ["compare", str(a.parent), str(b), "--bootstrap", "300", "--seed", "1", "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| hellaswag | 50 | 0.200 | 1.000 | +0.800 |" in printed
    saved = json.loads(out.read_text())
    assert saved["a"] == str(a.parent) and saved["resamples"] == 300 and saved["seed"] == 1
    assert saved["suites"]["hellaswag"]["verdict"] == "outside noise: B better"
    assert main(["compare", str(a), str(tmp_path / "missing.jsonl"), "--bootstrap", "100", "--seed", "0"]) == 2
    assert "no such evaluation details file" in capsys.readouterr().err


def test_cli_compare_defaults_come_from_params(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", A)
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: 5\neval:\n  bootstrap: 250\n")
    assert main(["compare", str(a), str(a), "--params", str(params)]) == 0
    assert "paired bootstrap: 250 resamples, seed 5" in capsys.readouterr().out


@pytest.mark.slow
def test_rev_path_reads_committed_and_experiment_details(tmp_path):
    """REV:PATH goes through dvc.api: a git revision and a `dvc exp save` experiment name, in a real repo."""
    dvc = str(Path(sys.executable).parent / "dvc")

    def sh(*cmd):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    details = tmp_path / "metrics/round_1/eval_details.jsonl"
    sh(*git, "init", "-q")
    sh(dvc, "init", "-q")
    _write(details, A)
    sh(dvc, "add", "-q", "metrics/round_1/eval_details.jsonl")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "round 1")
    _write(details, FIXED)
    sh(dvc, "add", "-q", "metrics/round_1/eval_details.jsonl")
    sh(dvc, "exp", "save", "-q", "-n", "fixed")
    assert load_details("HEAD:metrics/round_1", repo=tmp_path) == A
    assert load_details("fixed:metrics/round_1/eval_details.jsonl", repo=tmp_path) == FIXED
    res = compare_results(
        load_details("HEAD:metrics/round_1", tmp_path), load_details("metrics/round_1", tmp_path), 200, 0
    )
    assert res["suites"]["hellaswag"]["fixed"] == 40
    with pytest.raises(MiddoError, match="nosuchrev:metrics/round_1: cannot read metrics/round_1/eval_details.jsonl"):
        load_details("nosuchrev:metrics/round_1", repo=tmp_path)
