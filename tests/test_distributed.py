"""Sharding: the plan split, and a real 2-process torchrun (gloo, CPU) against one process on the same inputs.

Equal outputs alone do not show that the work was split (two processes that each did everything write the same files),
so every run also writes the per-rank reports (``MIDDO_RANK_REPORT``), and the tests hold the two ranks' shares to
being non-empty, disjoint and together everything, phase by phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from tiny_models import tiny_model

from middo.dataio import write_jsonl
from middo.distributed import RANK_REPORT_ENV, Shard, owned_mask
from middo.evaluate.suite import SUITES
from middo.records import Record

ROOT = Path(__file__).resolve().parents[1]


def test_take_then_interleave_restores_order():
    items = list(range(11))
    for world in (1, 2, 3, 5, 13):
        parts = [Shard(r, world).take(items) for r in range(world)]
        assert sorted(x for p in parts for x in p) == items  # every item exactly once
        assert Shard(0, world).interleave(parts) == items


def test_owned_mask_marks_batch_members():
    mask = owned_mask(6, [[4, 1], [5]])
    assert mask.tolist() == [False, True, False, False, True, True]


def test_single_process_merge_is_identity():
    values = np.array([1.5, np.nan, 3.0])
    assert Shard().merge_rows(values, np.ones(3, dtype=bool)) is values
    assert Shard().gather_json({"a": 1}) == [{"a": 1}]


SAMPLES = [
    Record(id=f"s{i}", instruction=instr, output=out)
    for i, (instr, out) in enumerate(
        [
            ("Write a Python function that reverses a string.", "def r(s):\n    return s[::-1]"),
            ("What is the capital of France?", "Paris."),
            ("Name three primary colours.", "Red, blue and yellow."),
            ("Explain photosynthesis in one sentence.", "Plants turn light, water and CO2 into sugar and oxygen."),
            ("Translate 'good morning' into German.", "Guten Morgen."),
            ("What is 17 * 3?", "51"),
            ("Give a synonym for 'happy'.", "Joyful."),
            ("Summarise the plot of Hamlet in two sentences.", "A prince avenges his father. Nearly everyone dies."),
            ("List the planets closest to the sun, in order.", "Mercury, Venus, Earth, Mars."),
        ]
    )
]


def _params(tmp_path: Path, processes: int = 1, mode: str = "generate") -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"]["processes"] = processes
    raw["base"].update(device="cpu", dtype="float32")
    raw["diagnose"]["max_tokens"] = 64  # a batch or two per sample, so both ranks get work in every phase
    raw["diagnose"]["quality"].update(mode=mode, max_new_tokens=3)
    raw["eval"].update(suites=["gsm8k", "hellaswag"], limit=3, max_new_tokens=12)
    path = tmp_path / f"params{processes}_{mode}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(cmd: list[str], cwd: Path, reports: Path) -> None:
    # one thread per process in both runs: the same matmul kernels, so the scores can be compared bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env[RANK_REPORT_ENV] = str(reports)  # each process writes the ids it computed there
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _middo(nproc: int, stage: str, *args: str) -> list[str]:
    """The dvc.yaml stage script, by itself or under an explicit torchrun launch."""
    script = str(ROOT / "stages" / f"{stage}.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, script, *args]


DIAGNOSE_PHASES = ("loss(base)", "loss(current)", "embed")  # then the judge's phase, quality(<mode>)


def _assert_split(reports: Path, stage: str, everything: dict[str, list[str]]) -> None:
    """The two ranks' reports: each did part of every phase, no unit twice, together exactly ``everything``.

    Args:
        reports: the ``MIDDO_RANK_REPORT`` folder of a two-process run.
        stage: the reports' stem.
        everything: phase -> every unit key once (the one-process run's, or the items themselves).
    """
    docs = [json.loads(p.read_text()) for p in sorted(reports.glob(f"{stage}.rank*.json"))]
    assert [(d["rank"], d["world"]) for d in docs] == [(0, 2), (1, 2)], f"{stage}: one report per rank of two"
    assert [set(d["computed"]) for d in docs] == [set(everything)] * 2, f"{stage}: every phase reported by both"
    for phase, units in everything.items():
        a, b = (d["computed"][phase] for d in docs)
        assert a and b, f"{stage} {phase}: a rank did nothing ({len(a)} vs {len(b)} units)"
        assert not set(a) & set(b), f"{stage} {phase}: computed by both ranks: {sorted(set(a) & set(b))}"
        assert sorted(a + b) == sorted(units), f"{stage} {phase}: the shares are not every unit once"


def _one_process_units(reports: Path, stage: str, ids: list[str], phases: list[str]) -> dict[str, list[str]]:
    """The one-process run's units per phase, checked against the samples: each sample's parts exactly once."""
    docs = [json.loads(p.read_text()) for p in reports.glob(f"{stage}.rank*.json")]
    assert len(docs) == 1, f"{stage}: {len(docs)} rank reports from one process"
    doc = docs[0]
    assert doc["world"] == 1 and sorted(doc["computed"]) == sorted(phases), f"{stage}: {sorted(doc['computed'])}"
    for phase, units in doc["computed"].items():
        assert len(units) == len(set(units)) and len(units) % len(ids) == 0, phase
        assert {u.split("#")[0] for u in units} == set(ids), phase
    return doc["computed"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(base_model_dir, tmp_path):
    """Diagnose shards through the ``base.processes`` knob, evaluate under an explicit torchrun launch."""
    data = tmp_path / "train.jsonl"
    write_jsonl(SAMPLES, data)
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        _run(
            _middo(
                1,
                "diagnose",
                "--round=1",
                f"--data={data}",
                f"--base={base_model_dir}",
                f"--current={base_model_dir}",
                f"--out={out / 'diagnosis'}",
                f"--summary={out / 'diagnose.json'}",
                f"--params={_params(tmp_path, nproc)}",
            ),
            tmp_path,
            out / "ranks",
        )
        _run(
            _middo(
                nproc,
                "evaluate",
                "--round=1",
                f"--model={base_model_dir}",
                f"--out={out / 'eval.json'}",
                f"--params={_params(tmp_path)}",
            ),
            tmp_path,
            out / "ranks",
        )
        outs[nproc] = out

    one, two = (pl.read_parquet(outs[n] / "diagnosis" / "scores.parquet") for n in (1, 2))
    assert one["id"].to_list() == [r.id for r in SAMPLES]
    assert one.equals(two, null_equal=True)  # bit-identical, NaN and all
    for name in ("flagged_complexity.jsonl", "flagged_diversity.jsonl", "flagged_quality.jsonl"):
        assert (outs[1] / "diagnosis" / name).read_bytes() == (outs[2] / "diagnosis" / name).read_bytes()
    assert json.loads((outs[1] / "diagnose.json").read_text()) == json.loads((outs[2] / "diagnose.json").read_text())
    assert (outs[1] / "eval.json").read_bytes() == (outs[2] / "eval.json").read_bytes()
    assert (outs[1] / "eval_details.jsonl").read_bytes() == (outs[2] / "eval_details.jsonl").read_bytes()
    assert json.loads((outs[2] / "eval.json").read_text())["n"] == {"gsm8k": 3, "hellaswag": 3}

    # and the two processes split the work: every sample (or judgement) and every item computed once, by one rank
    ids = [r.id for r in SAMPLES]
    phases = [*DIAGNOSE_PHASES, "quality(generate)"]
    _assert_split(outs[2] / "ranks", "diagnose", _one_process_units(outs[1] / "ranks", "diagnose", ids, phases))
    seed = yaml.safe_load((ROOT / "params.yaml").read_text())["base"]["seed"]
    items = {name: [str(item["id"]) for item in SUITES[name].load(3, seed)] for name in ("gsm8k", "hellaswag")}
    _assert_split(outs[2] / "ranks", "evaluate", items)


@pytest.mark.slow
def test_torchrun_logits_judge_two_processes_match_one(base_model_dir, tmp_path):
    """The default quality mode (``logits``) sharded over two processes scores exactly as one process does.

    A random tiny model: what is compared is the sharding of judge batches, not what the judge says.
    """
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    write_jsonl(SAMPLES, data)
    outs = {}
    for nproc in (1, 2):
        out = outs[nproc] = tmp_path / f"np{nproc}"
        _run(
            _middo(
                1,
                "diagnose",
                "--round=1",
                f"--data={data}",
                f"--base={model}",
                f"--current={model}",
                f"--out={out / 'diagnosis'}",
                f"--summary={out / 'diagnose.json'}",
                f"--params={_params(tmp_path, nproc, mode='logits')}",
            ),
            tmp_path,
            out / "ranks",
        )
    one, two = (pl.read_parquet(outs[n] / "diagnosis" / "scores.parquet") for n in (1, 2))
    assert one["id"].to_list() == [r.id for r in SAMPLES]
    assert one["quality"].is_not_nan().all()  # every judgement scored, so the comparison means something
    assert one.equals(two, null_equal=True)
    summary = json.loads((outs[2] / "diagnosis" / "summary.json").read_text())
    assert summary["quality"]["mode"] == "logits"
    assert summary == json.loads((outs[1] / "diagnosis" / "summary.json").read_text())
    assert json.loads((outs[2] / "diagnose.json").read_text()) == json.loads((outs[1] / "diagnose.json").read_text())
    ids = [r.id for r in SAMPLES]
    judged = _one_process_units(outs[1] / "ranks", "diagnose", ids, [*DIAGNOSE_PHASES, "quality(logits)"])
    assert len(judged["quality(logits)"]) > len(ids)  # the unit is part of a sample (one side's judgements)
    _assert_split(outs[2] / "ranks", "diagnose", judged)


ATOMIC_DIR_SCRIPT = """
import sys
from pathlib import Path
from middo.distributed import atomic_dir_on_main, from_env
shard = from_env()
with atomic_dir_on_main(sys.argv[1], shard) as target:
    target.mkdir(parents=True, exist_ok=True)
    (target / f"rank{shard.rank}.txt").write_text(str(target))
seen = sorted(p.name for p in Path(sys.argv[1]).iterdir())
# one file per rank (not stdout, where the two processes' prints can interleave mid-line)
Path(sys.argv[2], f"after{shard.rank}.txt").write_text(" ".join(seen))
"""


@pytest.mark.slow
def test_atomic_dir_on_main_shares_one_folder(tmp_path):
    """Both ranks write into rank 0's temp folder; it is in place, complete, before either rank goes on."""
    script = tmp_path / "write.py"
    script.write_text(ATOMIC_DIR_SCRIPT)
    out = tmp_path / "models" / "round_1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen = tmp_path / "seen"
    seen.mkdir()
    proc = subprocess.run(
        [*launcher, str(script), str(out), str(seen)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["rank0.txt", "rank1.txt"]
    assert (out / "rank0.txt").read_text() == (out / "rank1.txt").read_text()  # the same temp path on both ranks
    # after the block, each rank already sees the finished folder in place
    assert {f.name: f.read_text() for f in seen.iterdir()} == {
        "after0.txt": "rank0.txt rank1.txt",
        "after1.txt": "rank0.txt rank1.txt",
    }
    assert [p.name for p in out.parent.iterdir()] == ["round_1"]  # the temp folder is gone
