"""kNN similarity at scale: time and peak memory of the chunked top-k against the N×N matrix, one process per size.

Each size runs in a fresh subprocess, so ``ru_maxrss`` (a high-water mark) is that size's own peak. The chunked path
holds one ``rows × N`` block plus the ``N × k`` results, so its peak is the input plus a constant; the block is 256 MiB
of floats on a CPU and an eighth of the free memory on a GPU (``block_elems``; ``rows_per_block`` in the output). The
N×N reference needs ``4·N²`` bytes and is run only where that fits (``--naive-max``).
Correctness at every size: the chunked result equals an exact brute-force computation for a random sample of rows.

    .venv/bin/python bench/bench_knn_scale.py --sizes 10000,25000,50000,100000
    .venv/bin/python bench/bench_knn_scale.py --device cuda --sizes 1000000 --dim 1024   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, measure_matmul_flops, peak_rss_mb, report  # noqa: E402

from middo.diagnose.diversity import (  # noqa: E402
    _chunk_rows,
    _free_bytes,
    block_elems,
    knn_similarity,
    knn_similarity_bruteforce,
)

ROOT = Path(__file__).resolve().parents[1]


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Embedding-like data: points around 64 centres (pure noise would make every neighbour equally far)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim), dtype=np.float32)
    x = centres[rng.integers(0, 64, n)]
    x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x


def exact_for_rows(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact mean top-k cosine similarity of ``rows`` against all of ``x`` (float64, self excluded)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn[rows].astype(np.float64) @ xn.astype(np.float64).T
    s[np.arange(len(rows)), rows] = -np.inf
    return np.sort(s, axis=1)[:, ::-1][:, :k].mean(1)


def one(n: int, dim: int, k: int, device: str, seed: int, sample: int, naive: bool) -> dict:
    x = clustered(n, dim, seed)
    knn_similarity(x[:256], k=k, device=device)  # warm-up (thread pools, CUDA context)
    rss_input = peak_rss_mb()
    dev = torch.device(device)
    # about the block knn_similarity chooses (on a GPU, from what is free once the input is there: 4·N·dim bytes)
    rows_per_block = _chunk_rows(n, block_elems(dev.type, (_free_bytes(dev) or 0) - x.nbytes))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    fast = knn_similarity(x, k=k, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    fast_s = time.perf_counter() - start
    rss_fast = peak_rss_mb()
    rows = np.random.default_rng(seed + 1).choice(n, size=min(sample, n), replace=False)
    err = float(np.abs(exact_for_rows(x, rows, k) - fast[rows]).max())
    flops = measure_matmul_flops(device, torch.float32)
    row = {
        "n": n,
        "dim": dim,
        "fast_s": fast_s,
        "floor_s": 2.0 * n * n * dim / flops,
        "input_mb": x.nbytes / 2**20,
        "peak_rss_mb": rss_fast,
        "fast_rss_growth_mb": rss_fast - rss_input,
        "nxn_matrix_mb": 4.0 * n * n / 2**20,
        "max_abs_err_sample": err,
        "sample_rows": len(rows),
        "rows_per_block": rows_per_block,
    }
    row["fast_floor_frac"] = row["floor_s"] / fast_s
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if naive:
        start = time.perf_counter()
        ref = knn_similarity_bruteforce(x, k=k)
        row["naive_s"] = time.perf_counter() - start
        row["naive_rss_growth_mb"] = peak_rss_mb() - rss_fast
        row["ratio"] = row["naive_s"] / fast_s
        row["max_abs_diff_naive"] = float(np.abs(ref - fast).max())
    else:
        row["naive_s"] = "not run (N×N does not fit)"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,25000,50000,100000", help="comma-separated N")
    parser.add_argument("--dim", type=int, default=576, help="embedding width (576 = SmolLM2-135M)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample", type=int, default=1000, help="rows checked against exact brute force")
    parser.add_argument("--naive-max", type=int, default=20000, help="largest N for the N×N reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "knn_scale_cpu.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        row = one(args.one, args.dim, args.k, args.device, args.seed, args.sample, args.one <= args.naive_max)
        print("ROW " + json.dumps(row))
        return
    rows = []
    load_before = os.getloadavg()
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"[knn] N={n} x {args.dim} on {args.device}", flush=True)
        cmd = [sys.executable, __file__, f"--one={n}", *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(next(line[4:] for line in out.splitlines() if line.startswith("ROW "))))
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.device),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    report(rows, args.out, meta)


if __name__ == "__main__":
    main()
