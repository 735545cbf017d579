import json
from pathlib import Path

from middo.dataio import read_dataset
from middo.ingest import import_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_seed_imports_cleanly_with_counts(tmp_path):
    counts = import_dataset(ROOT / "data/seed/seed.jsonl", tmp_path / "round_0", tmp_path / "import.json")
    lines = (ROOT / "data/seed/seed.jsonl").read_text(encoding="utf-8").splitlines()
    assert counts["total"] == len(lines)
    assert counts["kept"] + counts["rejected"] + counts["blank"] + counts["over_limit"] == counts["total"]
    out = read_dataset(tmp_path / "round_0" / "train.jsonl").records
    assert len(out) == counts["kept"]
    assert {r.meta.get("category") for r in out} >= {"normal", "hard", "sloppy", "near_duplicate", "rare"}
    assert all(r.round == 0 and r.op == "seed" for r in out)
    assert json.loads((tmp_path / "import.json").read_text())["import"] == counts


def test_limit_and_rejects_add_up(tmp_path):
    bad = ROOT / "tests/data/bad/wrong_type.jsonl"
    counts = import_dataset(bad, tmp_path / "r0", tmp_path / "m.json", limit=1)
    assert counts["kept"] == 1
    assert counts["rejected"] >= 1
    assert counts["kept"] + counts["over_limit"] + counts["rejected"] + counts["blank"] == counts["total"]
    rejects = (tmp_path / "r0" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == counts["rejected"]
    assert "line 7: field 'output': expected str, got int" in rejects[-1]
