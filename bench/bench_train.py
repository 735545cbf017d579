"""SFT throughput on this machine: `python bench/bench_train.py [--steps 8] [--device cpu]` (needs data/round_0)."""

import argparse
import json
from dataclasses import replace

from middo.config import load_params
from middo.dataio.writers import read_records
from middo.train import train_sft

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--device", default="cpu")
ap.add_argument("--data", default="data/round_0/train.jsonl")
ap.add_argument("--model", default=".cache/models/smollm2-135m-instruct")
ap.add_argument("--out", default="/tmp/middo-bench-train")
ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (saves memory, slower)")
a = ap.parse_args()
p = load_params("params.yaml")
m = train_sft(
    read_records(a.data),
    a.model,
    a.out,
    replace(p.train, max_steps=a.steps, gradient_checkpointing=a.gradient_checkpointing),
    seed=p.base.seed,
    device=a.device,
    dtype="auto",
    trust_remote_code=p.model.trust_remote_code,
    data_path=a.data,
)
keys = ("samples", "steps", "seconds", "tokens_seen", "tokens_per_second")
print(json.dumps({"gradient_checkpointing": a.gradient_checkpointing, **{k: m[k] for k in keys}}))
