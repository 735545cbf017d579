import json

import polars as pl
import pytest

from middo.config import DiagnoseConfig, QualityConfig
from middo.dataio import read_dataset, write_jsonl
from middo.diagnose.quality import JUDGEMENTS
from middo.diagnose.run import diagnose_dataset
from middo.records import Record

SAMPLES = [
    Record(
        id="dup1", instruction="Write a Python function that reverses a string.", output="def r(s): return s[::-1]"
    ),
    Record(
        id="dup2", instruction="Write a Python function that reverses a string.", output="def r(s): return s[::-1]"
    ),
    Record(id="list", instruction="Write a Python function that reverses a list.", output="def r(x): return x[::-1]"),
    Record(id="sort", instruction="Write a Python function that sorts a list.", output="def s(x): return sorted(x)"),
    Record(id="max", instruction="Write a Python function that returns the max.", output="def m(x): return max(x)"),
    Record(
        id="bee",
        instruction="Explain the role of queen mandibular pheromone in honeybee swarming behaviour.",
        output="Queen mandibular pheromone suppresses worker ovary development and queen rearing.",
    ),
]


@pytest.mark.slow
def test_round_outputs(base_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    write_jsonl(SAMPLES, data)
    cfg = DiagnoseConfig(quality=QualityConfig(compare_modes=True, max_new_tokens=4))
    out = tmp_path / "diagnosis"
    summary = diagnose_dataset(data, base_model_dir, base_model_dir, out, tmp_path / "diagnose.json", cfg, "cpu")

    table = pl.read_parquet(out / "scores.parquet")
    assert table["id"].to_list() == [r.id for r in SAMPLES]
    expected = {"loss_base", "loss_current", "knn_sim", "quality", *(f"q_{j}" for j in JUDGEMENTS)}
    assert expected <= set(table.columns)
    # base and current are the same model here, so the two losses agree
    assert table["loss_base"].to_list() == pytest.approx(table["loss_current"].to_list(), abs=1e-5)
    assert table["knn_sim"][0] == pytest.approx(table["knn_sim"][1], abs=1e-6)  # exact duplicates: same neighbours
    for axis in ("complexity", "diversity", "quality"):
        flagged = read_dataset(out / f"flagged_{axis}.jsonl").records if summary["flagged"][axis] else []
        assert [r.id for r in flagged] == table.filter(pl.col(f"flag_{axis}"))["id"].to_list()
        assert len(flagged) == summary["flagged"][axis]
    assert "bee" in table.filter(pl.col("flag_diversity"))["id"].to_list()
    assert (out / "hist_knn_sim.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "diagnose.json").read_text())["diagnose"]
    assert saved["n"] == len(SAMPLES)
    assert set(saved["quality"]["agreement"]) == {"n", "within_tolerance", "pearson", "spearman"}
    assert sum(saved["quality"]["other_mode_status"].values()) == len(SAMPLES) * 6
