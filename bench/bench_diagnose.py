"""Diagnosis speed: middo's fast paths against reference-style code, side by side in one run.

    .venv/bin/python bench/bench_diagnose.py                    # CPU, defaults (~4 min on 2 cores)
    .venv/bin/python bench/bench_diagnose.py --device cuda      # same script on a GPU
    .venv/bin/python bench/bench_diagnose.py --device cuda --shape llama-8b --dtype bfloat16 --n 1024 \
        --max-tokens 16384 --out bench/results/diagnose_cuda_8b.json   # 8B-shaped random Llama (issue 8)

Three rows, each timed after a warm-up on a few samples, with the same inputs for both sides:

- loss: reference = batches of 8 in file order, right padding, full ``[B, T, vocab]`` logits, labels masked to the
  response; fast = ``response_losses`` (length-sorted token-budget batches, LM head only on scored positions).
- embed: reference = one prompt at a time through the full model with ``output_hidden_states=True`` (the LM head
  runs too), mean of the last hidden state; fast = ``prompt_embeddings`` (token-budget batches, no LM head).
- knn: reference = the N×N similarity matrix (``knn_similarity_bruteforce``, numpy on the CPU); fast =
  ``knn_similarity`` (row chunks and top-k, on ``--device``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import LLAMA_8B, bench_records, machine_info, measure_matmul_flops, peak_rss_mb, random_llama, report, sync

from middo.diagnose.batching import pad_batch
from middo.diagnose.complexity import response_losses, tokenize_for_loss
from middo.diagnose.diversity import (
    CPU_BLOCK_ELEMS,
    _chunk_rows,
    knn_similarity,
    knn_similarity_bruteforce,
    prompt_embeddings,
)
from middo.modeling import load_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"


@torch.inference_mode()
def reference_losses(model, encoded, pad_id: int, device: torch.device, batch_size: int = 8) -> np.ndarray:
    """Per-sample mean response CE the usual way: fixed batches in file order and full-vocabulary logits."""
    out = np.full(len(encoded), np.nan)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, mask = pad_batch([full for full, _ in chunk], pad_id, "right")
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        labels = ids.masked_fill(mask == 0, -100)
        for row, (_, n_prompt) in enumerate(chunk):
            labels[row, :n_prompt] = -100
        shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
        token_loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
        ).view(shift_labels.shape)
        counts = (shift_labels != -100).sum(1)
        out[start : start + len(chunk)] = (token_loss.sum(1) / counts).double().cpu().numpy()
    return out


@torch.inference_mode()
def reference_embeddings(model, tokenizer, texts, device: torch.device, max_length: int) -> np.ndarray:
    """One prompt per forward, full model with all hidden states, mean of the last one."""
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"] or [tokenizer.eos_token_id]
        ids = torch.tensor([ids], device=device)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        rows.append(out.hidden_states[-1][0].float().mean(0).cpu().numpy())
    return np.stack(rows)


def timed(fn, device) -> tuple[object, float, float]:
    """``(result, wall seconds, process CPU seconds)``; CPU seconds stay honest when other jobs share the cores."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start, time.process_time() - cpu


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    return float(np.nanmax(np.abs(a - b))) if a.size else 0.0


def compare(path: str, ref: tuple, fast: tuple, tokens: int, floor: float, diff: float) -> dict:
    """One table row: throughput of each side over the same real tokens, and each against the same floor.

    ``ref`` and ``fast`` are ``(wall_s, cpu_s)``; rates and the floor use wall seconds.
    """
    (ref, ref_cpu), (fast, fast_cpu) = ref, fast
    return {
        "path": path,
        "real_tokens": tokens,
        "ref_s": ref,
        "fast_s": fast,
        "ref_cpu_s": ref_cpu,
        "fast_cpu_s": fast_cpu,
        "ref_tok_per_s": tokens / ref,
        "fast_tok_per_s": tokens / fast,
        "ratio": ref / fast,
        "floor_s": floor,
        "ref_floor_frac": floor / ref,
        "fast_floor_frac": floor / fast,
        "max_abs_diff": diff,
    }


def bench_knn(n: int, dim: int, k: int, device, seed: int, flops_fp32: float) -> dict:
    """kNN first, before the model loads, so that the peak-RSS growth of each side is its own."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    knn_similarity(x[:512], k=k, device=device)
    knn_similarity_bruteforce(x[:512], k=k)
    print(f"[knn] fast: chunked top-{k} over {n}x{dim} on {device}", flush=True)
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = peak_rss_mb()
    fast, fast_s, fast_cpu = timed(lambda: knn_similarity(x, k=k, device=device), device)
    rss1 = peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None
    print(f"[knn] reference: {n}x{n} similarity matrix (numpy)", flush=True)
    ref, ref_s, ref_cpu = timed(lambda: knn_similarity_bruteforce(x, k=k), "cpu")
    rss2 = peak_rss_mb()
    chunk = _chunk_rows(n, CPU_BLOCK_ELEMS)  # rows per block on a CPU (on a GPU: sized from free memory)
    floor = 2.0 * n * n * dim / flops_fp32
    row = {
        "path": "knn",
        "knn_rows": n,
        "ref_s": ref_s,
        "fast_s": fast_s,
        "ref_cpu_s": ref_cpu,
        "fast_cpu_s": fast_cpu,
        "ratio": ref_s / fast_s,
        "floor_s": floor,
        "ref_floor_frac": floor / ref_s,
        "fast_floor_frac": floor / fast_s,
        "max_abs_diff": max_abs_diff(ref, fast),
        "ref_mem_est_mb": n * n * 4 / 2**20,
        "fast_mem_est_mb": (chunk * n * 4 + n * k * 8) / 2**20,
        "ref_peak_rss_growth_mb": rss2 - rss1,
        "fast_peak_rss_growth_mb": rss1 - rss0,
    }
    if gpu_peak is not None:
        row["fast_peak_gpu_mb"] = gpu_peak
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--n", type=int, default=256, help="samples for the loss and embedding rows")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="local HF model folder")
    parser.add_argument("--shape", choices=["llama-8b"], help="random-weight model of this shape (tokenizer: --model)")
    parser.add_argument("--knn-n", type=int, default=20000, help="rows of the random kNN matrix")
    parser.add_argument("--knn-dim", type=int, default=576, help="columns of the random kNN matrix")
    parser.add_argument("--knn-k", type=int, default=2, help="neighbours per row")
    parser.add_argument("--max-tokens", type=int, default=8192, help="token budget per batch of the fast paths")
    parser.add_argument("--loss-max-length", type=int, default=1024, help="train.max_length (losses are cut there)")
    parser.add_argument("--embed-max-length", type=int, default=512, help="diagnose.diversity.max_length")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/diagnose_<device>.json)")
    args = parser.parse_args()
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"diagnose_{args.device}.json"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()

    flops_fp32 = measure_matmul_flops(device, torch.float32)
    print(f"[floor] float32 matmul: {flops_fp32 / 1e9:.1f} GFLOP/s", flush=True)
    knn_row = bench_knn(args.knn_n, args.knn_dim, args.knn_k, device, args.seed, flops_fp32)

    if args.shape:
        dtype = {"auto": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        lm = random_llama(LLAMA_8B, args.model, args.device, dtype)
    else:
        lm = load_model(args.model, args.device, args.dtype)
    model, tok = lm.model, lm.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    flops = flops_fp32 if lm.dtype == torch.float32 else measure_matmul_flops(device, lm.dtype)
    print(f"[floor] {lm.dtype} matmul: {flops / 1e9:.1f} GFLOP/s; model {n_params / 1e6:.1f}M params", flush=True)
    records = bench_records(args.n, args.seed)

    enc = tokenize_for_loss(tok, records, args.loss_max_length)
    pad = tok.pad_token_id
    reference_losses(model, enc[:8], pad, device)
    response_losses(model, enc[:8], pad, device, args.max_tokens, desc="warm-up")
    tokens = sum(len(full) for full, _ in enc)
    print(f"[loss] reference: {len(enc)} samples, {tokens} real tokens, batches of 8", flush=True)
    ref, *ref_t = timed(lambda: reference_losses(model, enc, pad, device), device)
    print(f"[loss] fast: token budget {args.max_tokens}", flush=True)
    fast, *fast_t = timed(lambda: response_losses(model, enc, pad, device, args.max_tokens), device)
    floor = 2.0 * n_params * tokens / flops
    loss_row = compare("loss", ref_t, fast_t, tokens, floor, max_abs_diff(ref, fast))

    texts = [r.prompt_text for r in records]
    reference_embeddings(model, tok, texts[:4], device, args.embed_max_length)
    prompt_embeddings(model, tok, texts[:4], device, args.embed_max_length, args.max_tokens, desc="warm-up")
    tokens = sum(max(1, len(tok(t, truncation=True, max_length=args.embed_max_length)["input_ids"])) for t in texts)
    print(f"[embed] reference: {len(texts)} prompts, {tokens} real tokens, one at a time", flush=True)
    ref, *ref_t = timed(lambda: reference_embeddings(model, tok, texts, device, args.embed_max_length), device)
    print(f"[embed] fast: token budget {args.max_tokens}", flush=True)
    fast, *fast_t = timed(
        lambda: prompt_embeddings(model, tok, texts, device, args.embed_max_length, args.max_tokens), device
    )
    floor = 2.0 * n_params * tokens / flops
    embed_row = compare("embed", ref_t, fast_t, tokens, floor, max_abs_diff(ref.ravel(), fast.ravel()))

    flags = [f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None]
    meta = {
        "command": " ".join(["bench/bench_diagnose.py", *flags]),
        "machine": machine_info(device),
        "model": args.model,
        "n_params": n_params,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "matmul_flops": flops,
        "matmul_flops_fp32": flops_fp32,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        # other processes on the same cores skew every number; a 1-min load above the core count means a busy box
        "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": os.getloadavg(),
    }
    print(f"machine: {meta['machine']}; dtype {meta['dtype']}; wall {meta['wall_s']:.0f}s")
    report([loss_row, embed_row, knn_row], out_path, meta)


if __name__ == "__main__":
    main()
