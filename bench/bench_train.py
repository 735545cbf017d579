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
a = ap.parse_args()
p = load_params("params.yaml")
m = train_sft(read_records(a.data), a.model, a.out, replace(p.train, max_steps=a.steps), p.base.seed, a.device, "auto")
print(json.dumps({k: m[k] for k in ("samples", "steps", "seconds", "tokens_seen", "tokens_per_second")}))
