"""SFT throughput: ``train_sft`` with ``params.yaml``'s ``train`` section and a few steps, one kernel setting per run.

    .venv/bin/python bench/bench_train.py --steps 8                                  # CPU, as in docs/benchmarks.md
    .venv/bin/python bench/bench_train.py --device cuda --dtype bfloat16 --attn flash_attention_2 --liger \
        --data data/seed/seed.jsonl --json bench/results/train_cuda_fa2_liger.json   # GPU (bench/gpu_check.sh)

Each run is one process and one setting, so a kernel that fails to load (Liger, FlashAttention-2) fails only its own
run; ``bench/gpu_check.sh`` runs the settings side by side. ``--data`` is a file this pipeline wrote
(``data/round_0/train.jsonl``) or the seed file (``data/seed/seed.jsonl``, Alpaca JSONL with ids).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, report  # noqa: E402

from middo.config import load_params  # noqa: E402
from middo.dataio.writers import read_records  # noqa: E402
from middo.train import train_sft  # noqa: E402

KEYS = ("samples", "steps", "seconds", "tokens_seen", "tokens_per_second", "first_loss", "last_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (train.max_steps)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--data", default="data/round_0/train.jsonl", help="records to train on (JSONL)")
    parser.add_argument("--model", default=".cache/models/smollm2-135m-instruct", help="local HF model folder")
    parser.add_argument("--params", default="params.yaml", help="its train section is the base setting")
    parser.add_argument("--out", default="/tmp/middo-bench-train", help="checkpoint folder (overwritten)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (saves memory)")
    parser.add_argument("--liger", action="store_true", help="train.liger: Liger kernels (CUDA + liger-kernel)")
    parser.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], help="default: params")
    parser.add_argument("--json", metavar="OUT", help="also write the result (with the command and machine) here")
    args = parser.parse_args()

    params = load_params(args.params)
    cfg = replace(
        params.train,
        max_steps=args.steps,
        gradient_checkpointing=args.gradient_checkpointing,
        liger=args.liger,
        attn_implementation=args.attn or params.train.attn_implementation,
    )
    metrics = train_sft(
        read_records(args.data),
        args.model,
        args.out,
        cfg,
        seed=params.base.seed,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=params.model.trust_remote_code,
        data_path=args.data,
    )
    result = {
        "attn_implementation": cfg.attn_implementation,
        "liger": cfg.liger,
        "dtype": args.dtype,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        **{k: metrics.get(k) for k in KEYS},
    }
    print(json.dumps(result))
    if args.json:
        meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(args.device)}
        report([result], args.json, meta)


if __name__ == "__main__":
    main()
