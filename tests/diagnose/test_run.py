import json

import numpy as np
import polars as pl
import pytest
from tiny_models import tiny_model

from middo.config import DiagnoseConfig, DiversityConfig, QualityConfig
from middo.dataio import read_dataset, write_jsonl
from middo.diagnose.quality import JUDGEMENTS, agreement, judge_generate, judge_logits
from middo.diagnose.run import diagnose_dataset
from middo.errors import MiddoError
from middo.modeling import load_model
from middo.provenance import PACKAGES
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
    model = base_model_dir
    summary = diagnose_dataset(
        data, model, model, out, tmp_path / "diagnose.json", cfg, "cpu", "auto", False, max_length=512
    )

    table = pl.read_parquet(out / "scores.parquet")
    assert table["id"].to_list() == [r.id for r in SAMPLES]
    expected = {"loss_base", "loss_current", "knn_sim", "quality", *(f"q_{j}" for j in JUDGEMENTS)}
    assert expected <= set(table.columns)
    # base and current are the same model here, so the two losses agree
    assert table["loss_base"].to_list() == pytest.approx(table["loss_current"].to_list(), abs=1e-5)
    assert table["knn_sim"][0] == pytest.approx(table["knn_sim"][1], abs=1e-6)  # exact duplicates: same neighbours
    # the refine step reads `neighbors`: k ids per row, most similar first, never the row itself
    assert table.schema["neighbors"] == pl.List(pl.String)
    neighbors = dict(zip(table["id"], table["neighbors"].to_list()))
    assert neighbors["dup1"][0] == "dup2" and neighbors["dup2"][0] == "dup1"
    assert all(len(v) == cfg.diversity.k and rid not in v and set(v) <= set(neighbors) for rid, v in neighbors.items())
    for axis in ("complexity", "diversity", "quality"):
        flagged = read_dataset(out / f"flagged_{axis}.jsonl").records if summary["flagged"][axis] else []
        assert [r.id for r in flagged] == table.filter(pl.col(f"flag_{axis}"))["id"].to_list()
        assert len(flagged) == summary["flagged"][axis]
    assert "bee" in table.filter(pl.col("flag_diversity"))["id"].to_list()
    assert (out / "hist_knn_sim.png").stat().st_size > 1000
    assert (out / "embedding_map.png").stat().st_size > 1000
    mapped = json.loads((out / "embedding_map.json").read_text())
    assert [r["id"] for r in mapped] == [r.id for r in SAMPLES]
    assert [r["sparse"] for r in mapped] == table["flag_diversity"].to_list()
    assert mapped[0]["x"] == pytest.approx(mapped[1]["x"], abs=1e-3)  # exact duplicates share a point
    saved = json.loads((out / "summary.json").read_text())  # the whole record, in the diagnosis folder
    assert saved["n"] == len(SAMPLES)
    assert set(saved["quality"]["agreement"]) == {"n", "within_tolerance", "pearson", "spearman"}
    assert saved["unscored"]["quality"] == 0
    # the DVC metric: its numbers only, each threshold's value
    metric = json.loads((tmp_path / "diagnose.json").read_text())
    threshold = {name: t["value"] for name, t in saved["thresholds"].items()}
    assert metric == {"diagnose": {k: saved[k] for k in ("n", "flagged", "unscored")} | {"threshold": threshold}}
    assert set(summary["quality_seconds"]) == {"logits", "generate"}
    env = json.loads((tmp_path / "env" / "diagnose.json").read_text())
    assert set(env) == {"python", *PACKAGES, "device", "dtype", "cpu"}
    assert env["device"] == "cpu" and env["dtype"] in ("float32", "bfloat16")  # what 'auto' resolved to

    # the configured judge (logits) wrote the table and the other (generate) the comparison: each equals a direct call
    # with the same settings (one window, the same batches, so the same numbers in either dtype)
    lm = load_model(model, "cpu", env["dtype"])
    q = cfg.quality
    logits = judge_logits(lm.model, lm.tokenizer, SAMPLES, lm.device, cfg.max_tokens, q.max_chars)
    generated, _ = judge_generate(lm.model, lm.tokenizer, SAMPLES, lm.device, cfg.max_tokens, 4, q.max_chars)
    table_scores = table.select([f"q_{j}" for j in JUDGEMENTS]).to_numpy()
    np.testing.assert_allclose(table_scores, logits.scores, rtol=0, atol=1e-6)
    assert not np.allclose(table_scores, np.round(table_scores))  # expected values, not generate's whole numbers
    assert saved["quality"]["mode"] == "logits"
    assert saved["quality"]["status"] == {"ok": len(SAMPLES) * len(JUDGEMENTS)}
    assert saved["quality"]["other_mode_status"] == generated.status_counts
    assert saved["quality"]["agreement"] == pytest.approx(agreement(logits.mean, generated.mean), nan_ok=True)


def test_fewer_than_k_plus_one_samples_names_file_count_and_param(tmp_path):
    data = tmp_path / "data" / "round_1" / "train.jsonl"
    data.parent.mkdir(parents=True)
    write_jsonl(SAMPLES[:2], data)
    cfg = DiagnoseConfig(diversity=DiversityConfig(k=2))
    missing = tmp_path / "no-model"  # refused before any model is loaded
    with pytest.raises(MiddoError) as err:
        diagnose_dataset(
            data, missing, missing, tmp_path / "out", tmp_path / "d.json", cfg, "cpu", "float32", False, max_length=64
        )
    msg = str(err.value)
    assert msg.startswith(f"{data}: 2 sample(s)")
    assert "diagnose.diversity.k=2" in msg and "at least k+1 = 3" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "d.json").exists()


# prompts over 32 tokens: under max_tokens=64 every batch holds one sample whatever the window, so scores can be
# compared bit for bit (regrouping samples into other padded batches moves float32 results by an ulp or so)
LONG = [
    Record(id=f"long{i}", instruction=f"Question {i}: {topic}. " * 6, output=f"Answer {i}: it depends on {topic}")
    for i, topic in enumerate(["the weather in spring", "prime numbers", "river deltas", "Roman roads", "jazz"])
]


@pytest.mark.slow
def test_windows_smaller_than_the_dataset_give_the_same_scores(base_model_dir, tmp_path):
    """``diagnose.window`` bounds memory on large datasets; it must not change a single score."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    write_jsonl(LONG, data)
    scores = {}
    for window in (2, len(LONG)):  # 2: two full windows and a partial one
        out = tmp_path / f"w{window}"
        cfg = DiagnoseConfig(window=window, max_tokens=64)
        diagnose_dataset(data, model, model, out, out / "diagnose.json", cfg, "cpu", "float32", False, max_length=256)
        scores[window] = (out / "scores.parquet").read_bytes()
    assert pl.read_parquet(tmp_path / "w2" / "scores.parquet")["id"].to_list() == [r.id for r in LONG]
    assert scores[2] == scores[len(LONG)]
