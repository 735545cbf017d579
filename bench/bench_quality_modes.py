"""Quality judge: ``logits`` mode (expected score, one pass) against ``generate`` (the reference's parsed answer).

Runs the real ``diagnose_dataset`` on the demo's round-0 data (``data.seed_path`` imported with ``data.limit``, as
``dvc repro import_seed`` does) with ``diagnose.quality.compare_modes: true``, so both modes judge the same samples
with the same model in one process. Reports each mode's wall seconds, the speed-up, and the agreement of the
per-sample quality scores (Spearman with average ranks for ties, Pearson, share within 1 point).

    .venv/bin/python bench/bench_quality_modes.py                        # demo params, CPU (~4 min on 2 cores)
    .venv/bin/python bench/bench_quality_modes.py --max-new-tokens 32 --out bench/results/quality_modes_cpu_new32.json
    .venv/bin/python bench/bench_quality_modes.py --device cuda --limit 256

The model is ``models/base`` when the demo has built it, else the cached converted default model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, peak_rss_mb, report  # noqa: E402

from middo.config import load_params  # noqa: E402
from middo.diagnose.run import diagnose_dataset  # noqa: E402
from middo.ingest import import_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = (ROOT / "models" / "base", ROOT / ".cache" / "models" / "smollm2-135m-instruct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="data, diagnose and train.max_length")
    parser.add_argument("--model", default=None, help="local HF folder (default: models/base, else the cached one)")
    parser.add_argument("--limit", type=int, default=None, help="samples (default: data.limit, the demo's 32)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generate mode's answer length (params)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/quality_modes_<device>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params(args.params)
    model = Path(args.model) if args.model else next((m for m in MODELS if (m / "config.json").is_file()), None)
    if model is None:
        raise SystemExit(f"no model in {[str(m) for m in MODELS]}; run `dvc repro base_model` or pass --model")
    limit = p.data.limit if args.limit is None else args.limit
    quality = dataclasses.replace(p.diagnose.quality, compare_modes=True)
    if args.max_new_tokens is not None:
        quality = dataclasses.replace(quality, max_new_tokens=args.max_new_tokens)
    cfg = dataclasses.replace(p.diagnose, quality=quality)
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed = ROOT / p.data.seed_path  # params paths are relative to the repository root, as dvc runs them
        imported = import_dataset(seed, tmp / "round_0", tmp / "import.json", p.data.format, p.data.split, limit)
        summary = diagnose_dataset(
            tmp / "round_0" / "train.jsonl",
            model,
            model,
            tmp / "diagnosis",
            tmp / "diagnose.json",
            cfg,
            args.device,
            args.dtype,
            p.model.trust_remote_code,
            max_length=p.train.max_length,
        )
        env = json.loads((tmp / "env" / "diagnose.json").read_text())  # the stage's env record (provenance.env_path)
    q, seconds = summary["quality"], summary["quality_seconds"]
    n = summary["n"]
    statuses = {q["mode"]: q["status"], ("generate" if q["mode"] == "logits" else "logits"): q["other_mode_status"]}
    rows = [
        {
            "mode": mode,
            "samples": n,
            "judgements": n * 6,
            "seconds": seconds[mode],
            "judgements_per_s": n * 6 / seconds[mode],
            "unparseable": statuses[mode].get("unparseable", 0),
            "clamped": statuses[mode].get("clamped", 0),
        }
        for mode in ("generate", "logits")
    ]
    agreement = {**q["agreement"], "speedup": seconds["generate"] / seconds["logits"]}
    rows.append({"mode": "agreement", **agreement})
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": str(model),
        "records": {"seed_path": p.data.seed_path, "limit": limit, "kept": imported["kept"]},
        "quality_config": dataclasses.asdict(quality),
        "machine": machine_info(args.device),
        "env": env,
        "agreement": agreement,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": os.getloadavg(),
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"quality_modes_{args.device}.json"
    report(rows, out, meta)


if __name__ == "__main__":
    main()
