"""Do the two quality judges agree? ``generate`` with the reference's sampling against the ``logits`` fast option.

The judge decides which originals are replaced, so the question is whether the fast mode flags the same samples as
the reference's sampled judge on a model that can judge (7-8B). Both modes judge the same records with the same
model; the report gives the Spearman correlation of the per-sample scores (average ranks for ties), and for each m
the samples flagged below mean - m*std (sample std, as the diagnosis) by either mode: their overlap (Jaccard) and
the share of generate's flags that logits also flags. Not measured at 7-8B until someone runs this on a GPU:

    .venv/bin/python bench/bench_judge_agreement.py --device cuda --model /models/Meta-Llama-3.1-8B-Instruct \\
        --data data/alpaca/alpaca_data.json --limit 1000
    .venv/bin/python bench/bench_judge_agreement.py --model .cache/models/smollm2-135m-instruct \\
        --data tests/data/... --limit 8 --max-new-tokens 8 --engine hf   # CPU smoke: 135M cannot judge

Generate-mode settings default to the paper presets' (``presets/paper.yaml``: vLLM, temperature 0.1, top_p 0.7, top_k
50, 1024 new tokens, cutoff 4096, no character clipping; ``--vllm-python`` names an env with vllm); ``--dry-run``
prints them and the records, loads no model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, peak_rss_mb, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def flagged_overlap(generate: np.ndarray, logits: np.ndarray, m: float) -> dict:
    """Flag sets of both modes at mean - m*std (the diagnosis's rule) and how far they coincide."""
    from middo.diagnose.thresholds import flag_quality

    g, _ = flag_quality(generate, m)
    lg, _ = flag_quality(logits, m)
    both, either = int((g & lg).sum()), int((g | lg).sum())
    return {
        "m": m,
        "flagged_generate": int(g.sum()),
        "flagged_logits": int(lg.sum()),
        "flagged_both": both,
        "jaccard": both / either if either else float("nan"),
        "generate_flags_also_logits": both / int(g.sum()) if g.sum() else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    from middo.config import load_params

    preset = load_params(ROOT / "params.yaml", overrides=_preset_quality()).diagnose.quality
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="local HF folder of the judge (the current model of a round)")
    parser.add_argument("--data", help="seed file or round data (any format `middo` imports)")
    parser.add_argument("--limit", type=int, default=1000, help="records (0: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=65536, help="padded tokens per batch (the presets')")
    parser.add_argument("--temperature", type=float, default=preset.temperature)
    parser.add_argument("--top-p", type=float, default=preset.top_p)
    parser.add_argument("--top-k", type=int, default=preset.top_k)
    parser.add_argument("--max-new-tokens", type=int, default=preset.max_new_tokens)
    parser.add_argument("--cutoff", type=int, default=preset.cutoff)
    parser.add_argument("--max-chars", type=int, default=preset.max_chars)
    parser.add_argument(
        "--engine", default=preset.engine, choices=["hf", "vllm"], help="what decodes generate (the presets: vllm)"
    )
    parser.add_argument("--vllm-python", default=preset.vllm_python, help="engine vllm: Python of an env with vllm")
    parser.add_argument("--m", type=float, nargs="+", default=[0.5, 1.0, 1.5], help="flag thresholds to compare")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/judge_agreement_<device>.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the settings and records; load no model")
    args = parser.parse_args(argv)
    if not args.model or not args.data:
        parser.error("--model and --data are required")
    settings = {
        k: getattr(args, k)
        for k in ("engine", "temperature", "top_p", "top_k", "max_new_tokens", "cutoff", "max_chars")
    }

    from middo.dataio.writers import read_records
    from middo.ingest import import_dataset

    with tempfile.TemporaryDirectory() as tmp:
        import_dataset(args.data, Path(tmp) / "d", Path(tmp) / "import.json", "auto", "train", args.limit)
        records = read_records(Path(tmp) / "d" / "train.jsonl")
    print(json.dumps({"records": len(records), "generate": settings}))
    if args.dry_run:
        return

    import torch

    from middo.diagnose.quality import agreement, judge_generate, judge_logits
    from middo.diagnose.quality_vllm import check_vllm, judge_vllm
    from middo.modeling import load_model

    python = check_vllm(args.vllm_python, args.device) if args.engine == "vllm" else ""
    lm = load_model(args.model, args.device, args.dtype)
    clock = time.perf_counter()  # logits first: the vLLM child needs the memory the HF model holds
    res_l = judge_logits(
        lm.model, lm.tokenizer, records, lm.device, args.max_tokens, args.max_chars, cutoff=args.cutoff
    )
    t_l = time.perf_counter() - clock
    clock = time.perf_counter()
    if args.engine == "vllm":
        tokenizer, dtype = lm.tokenizer, str(lm.dtype).removeprefix("torch.")
        del lm
        torch.cuda.empty_cache()
        res_g, answers = judge_vllm(
            args.model, tokenizer, records, python=python, dtype=dtype, gpu_index=0,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            cutoff=args.cutoff, max_chars=args.max_chars, gpu_memory_utilization=preset.gpu_memory_utilization,
        )  # fmt: skip
    else:
        res_g, answers = judge_generate(
            lm.model, lm.tokenizer, records, lm.device, args.max_tokens, args.max_new_tokens, args.max_chars,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, cutoff=args.cutoff,
        )  # fmt: skip
    t_g = time.perf_counter() - clock
    agree = agreement(res_g.mean, res_l.mean)
    rows = [flagged_overlap(res_g.mean, res_l.mean, m) for m in args.m]
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": str(args.model),
        "data": str(args.data),
        "records": len(records),
        "generate_settings": settings,
        "generate_status": res_g.status_counts,
        "agreement": agree,
        "seconds": {"generate": t_g, "logits": t_l},
        "answers_sample": answers[:12],
        "machine": machine_info(args.device),
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps({"agreement": agree, "seconds": meta["seconds"], "status": res_g.status_counts}))
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"judge_agreement_{args.device}.json"
    report(rows, out, meta)


def _preset_quality() -> dict:
    """The paper preset's diagnose.quality block, as overrides (the defaults of this script)."""
    import yaml

    quality = yaml.safe_load((ROOT / "presets" / "paper.yaml").read_text())["diagnose"]["quality"]
    return {"diagnose": {"quality": quality}}


if __name__ == "__main__":
    main()
