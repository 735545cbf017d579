"""Diagnosis at scale: the whole `diagnose_dataset` (two losses, embeddings, kNN, quality) at growing N.

Each N runs in a fresh subprocess, so peak RSS (``ru_maxrss``) is that run's own. Two models:

* ``--model`` (default: the embedded SmolLM2-135M) at small N gives the real per-signal throughput;
* ``--tiny``: a 2-layer random-weight Llama with the same tokenizer, at 10k+ samples, where the model costs little and
  what is measured is everything else: tokenization, batching, merging, memory. Its peak RSS must stay flat in N apart
  from the score and embedding arrays (the records are tokenized ``diagnose.window`` at a time).

The projection to 50k / 500k samples scales each signal's measured seconds per sample linearly (batches are
independent) from the largest real-model run, and kNN quadratically (N² · dim FLOPs) from the largest N measured by
``bench_knn_scale.py`` (``--knn-result``; a 128-sample kNN takes microseconds and says nothing about 500k).

    .venv/bin/python bench/bench_diagnose_scale.py --sizes 128 --out bench/results/diagnose_scale_real.json
    .venv/bin/python bench/bench_diagnose_scale.py --tiny --sizes 2500,5000,10000,20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_records, machine_info, peak_rss_mb, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"


def tiny_model(src: Path, dst: Path) -> Path:
    """A 2-layer, 64-wide random Llama with ``src``'s tokenizer and vocabulary (seeded, so runs are comparable)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    cfg = AutoConfig.from_pretrained(src)
    cfg.update(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def one(n: int, model: Path, max_tokens: int, window: int, seed: int, max_length: int) -> dict:
    from middo.config import DiagnoseConfig
    from middo.dataio import write_jsonl
    from middo.diagnose.run import diagnose_dataset

    records = bench_records(n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        write_jsonl(records, data)
        rss_before = peak_rss_mb()
        cfg = DiagnoseConfig(max_tokens=max_tokens, window=window)
        summary = diagnose_dataset(
            data,
            model,
            model,
            Path(tmp) / "out",
            Path(tmp) / "d.json",
            cfg,
            "cpu",
            "float32",
            trust_remote_code=False,
            max_length=max_length,
        )
    seconds = summary["seconds"]
    row = {"n": n, **{f"{k}_s": v for k, v in seconds.items()}}
    row["total_s"] = sum(seconds.values())
    row["samples_per_s"] = n / row["total_s"]
    row["rss_before_mb"] = rss_before
    row["peak_rss_mb"] = peak_rss_mb()
    row["flagged_any"] = summary["flagged"]["any"]
    return row


def knn_anchor(path: Path, dim: int) -> tuple[int, float]:
    """(N, seconds) of the largest chunked-kNN run in a bench_knn_scale result, rescaled to ``dim``."""
    rows = json.loads(path.read_text())["rows"]
    best = max(rows, key=lambda r: r["n"])
    return best["n"], best["fast_s"] * dim / best["dim"]


def project(row: dict, targets: list[int], dim: int, knn: tuple[int, float] | None = None) -> list[dict]:
    """Linear per-sample costs for the model passes, quadratic for kNN, from one measured row (and a kNN anchor)."""
    n = row["n"]
    knn_n, knn_s = knn or (n, row["knn_s"])
    out = []
    for target in targets:
        scale = target / n
        est = {k: row[f"{k}_s"] * scale for k in ("loss_base", "loss_current", "embed", "quality")}
        est["knn"] = knn_s * (target / knn_n) ** 2
        out.append(
            {
                "n": target,
                **{f"{k}_h": v / 3600 for k, v in est.items()},
                "total_h": sum(est.values()) / 3600,
                "embeddings_mb": target * dim * 4 / 2**20,
                "scores_mb": target * 16 * 8 / 2**20,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--tiny", action="store_true", help="2-layer random Llama (pipeline cost and memory only)")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=1024, help="train.max_length: where losses are cut")
    parser.add_argument("--project", default="50000,500000", help="sizes to project to from the largest run")
    parser.add_argument("--knn-result", default=str(ROOT / "bench" / "results" / "knn_scale_cpu.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = Path(args.model)
    if args.tiny:
        model = tiny_model(model, ROOT / ".cache" / "models" / "tiny-random-llama")
    if args.one:
        print("ROW " + json.dumps(one(args.one, model, args.max_tokens, args.window, args.seed, args.max_length)))
        return
    out = args.out or ROOT / "bench" / "results" / f"diagnose_scale_{'tiny' if args.tiny else 'real'}.json"
    rows = []
    load_before = os.getloadavg()
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"[diagnose] N={n} model={model.name}", flush=True)
        cmd = [sys.executable, __file__, f"--one={n}", *sys.argv[1:]]
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(next(line[4:] for line in done.stdout.splitlines() if line.startswith("ROW "))))
    from transformers import AutoConfig

    dim = AutoConfig.from_pretrained(model).hidden_size
    anchor = knn_anchor(Path(args.knn_result), dim) if Path(args.knn_result).is_file() else None
    targets = [int(s) for s in args.project.split(",")] if args.project else []
    projection = project(rows[-1], targets, dim, anchor) if targets else []
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": str(model),
        "machine": machine_info("cpu"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "knn_anchor": {"file": args.knn_result, "n": anchor[0], "seconds_at_dim": anchor[1]} if anchor else None,
        "projection": projection,
    }
    report(rows, out, meta)
    if projection:
        print("projection from N =", rows[-1]["n"])
        report(projection, Path(out).with_name(Path(out).stem + "_projection.json"), meta)


if __name__ == "__main__":
    main()
