"""The per-round page: flags with thresholds, images beside it, before/after examples, accuracy with intervals."""

import json
from pathlib import Path

from middo.round_report import write_round_reports

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _metrics(m: Path) -> None:
    acc = {
        "accuracy": {"gsm8k": 0.5},
        "average": 0.5,
        "n": {"gsm8k": 4},
        "interval": {"gsm8k": {"low": 0.15, "high": 0.85}, "average": {"low": 0.15, "high": 0.85}},
    }
    _write(m / "round_0/eval.json", acc)
    _write(
        m / "round_0/import.json",
        {
            "import": {
                "kept": 9,
                "total": 10,
                "rejected": 1,
                "over_limit": 0,
                "rejects_by_reason": {"exact duplicate of an earlier record": 1},
            }
        },
    )
    _write(m / "round_1/eval.json", acc)
    threshold = {"mean": 0.9, "std": 0.05, "m": 1.0, "value": 0.85, "direction": "below"}
    # the metrics files hold numbers only; the whole records are in the stages' folders (what the page reads)
    _write(m / "round_1/diagnose.json", {"diagnose": {"flagged": {"diversity": 2}, "threshold": {"knn_sim": 0.85}}})
    _write(m / "round_1/diagnosis/summary.json", {"flagged": {"diversity": 2}, "thresholds": {"knn_sim": threshold}})
    per_axis = {"diversity": {"flagged": 2, "asked": 2, "added": 1, "unusable": 1, "duplicate": 0}}
    sizes = {"size_before": 9, "size_after": 10, "removed": 0, "added": 1}
    _write(m / "round_1/refine.json", {"refine": sizes})
    _write(
        m / "round_1/refine/summary.json",
        {
            **sizes,
            "merge": "reference",
            "selection": "model",
            "per_axis": per_axis,
            "reply_status": {"ok": 1, "rejected": 1},
            "rejected": {"instruction too short": 1},
        },
    )
    before = {"id": "s3", "instruction": "Name a rare bird.", "input": "", "output": "The kakapo."}
    after = {"id": "n1", "instruction": "Name a flightless parrot.", "input": "", "output": "The kakapo."}
    changes = [
        {
            "axis": "diversity",
            "op": "diversify",
            "parent_id": "s3",
            "status": "ok",
            "before": before,
            "result": "added",
            "id": "n1",
            "after": after,
        },
        {
            "axis": "diversity",
            "op": "diversify",
            "parent_id": "s4",
            "status": "rejected: instruction too short",
            "before": before,
            "result": "kept_original",
            "reply": "Bird?",
        },
    ]
    _write(m / "round_1/refine/changes.jsonl", "".join(json.dumps(c) + "\n" for c in changes))
    for name in ("hist_knn_sim.png", "embedding_map.png"):
        (m / "round_1/diagnosis").mkdir(parents=True, exist_ok=True)
        (m / "round_1/diagnosis" / name).write_bytes(PNG)


def test_one_page_per_round_with_its_images(tmp_path):
    m = tmp_path / "metrics"
    _metrics(m)
    noise = [
        {
            "from": 0,
            "to": 1,
            "suites": {"gsm8k": {"verdict": "within noise"}},
            "average": {"delta": 0.0, "low": -0.25, "high": 0.25, "verdict": "within noise"},
        }
    ]
    pages = write_round_reports(m, {"1": 0}, noise, tmp_path / "reports/rounds")
    assert [p.name for p in pages] == ["round_0.md", "round_1.md"]
    seed = pages[0].read_text()
    assert "9 of 10 records kept" in seed and "exact duplicate of an earlier record: 1" in seed
    page = pages[1].read_text()
    assert "Refines round 0: 9 → 10 samples" in page
    assert "| knn_sim | 0.900 | 0.050 | 1.0 | 0.850 | below | 2 (diversity) |" in page
    assert "![Prompt embeddings (PCA): sparse flags and teacher-made samples](round_1/embedding_map.png)" in page
    assert (tmp_path / "reports/rounds/round_1/embedding_map.png").read_bytes() == PNG
    assert "hist_quality" not in page  # only images that exist are linked
    assert "| diversity | 2 | 2 | 1 | 1 | 0 |" in page
    assert "Teacher replies: ok 1, rejected 1; rejected by validation: instruction too short 1." in page
    assert "**s3** → added (ok)" in page and "> **prompt:** Name a flightless parrot." in page
    assert "Teacher's reply (not used): `Bird?`" in page
    assert "| gsm8k | 0.500 | 0.15–0.85 | 4 |" in page
    assert "Against round 0: average +0.000 (95% -0.25 to +0.25), **within noise**" in page
    assert not (tmp_path / "reports/rounds/round_0").exists()  # round 0 has no diagnosis images


def test_a_run_from_before_the_records_moved_reads_them_from_its_metrics_files(tmp_path):
    m = tmp_path / "metrics"
    _metrics(m)
    for stage, folder in (("diagnose", "diagnosis"), ("refine", "refine")):
        whole = json.loads((m / f"round_1/{folder}/summary.json").read_text())
        (m / f"round_1/{folder}/summary.json").unlink()
        _write(m / f"round_1/{stage}.json", {stage: whole})
    page = write_round_reports(m, {"1": 0}, [], tmp_path / "reports/rounds")[1].read_text()
    assert "| knn_sim | 0.900 | 0.050 | 1.0 | 0.850 | below | 2 (diversity) |" in page
    assert "| diversity | 2 | 2 | 1 | 1 | 0 |" in page
