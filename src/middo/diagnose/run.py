"""One round of diagnosis: measure the three signals, decide the flags, write the tables, plots and summary."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from middo.config import DiagnoseConfig
from middo.dataio import write_jsonl
from middo.dataio.atomic import atomic_write_bytes, atomic_write_text
from middo.dataio.writers import read_records
from middo.diagnose.complexity import response_losses, tokenize_for_loss
from middo.diagnose.diversity import knn_similarity, prompt_embeddings
from middo.diagnose.quality import JUDGEMENTS, agreement, judge_generate, judge_logits
from middo.diagnose.thresholds import flag_complexity, flag_diversity, flag_quality
from middo.modeling import load_model
from middo.plots import histogram


def _quality(cfg, lm, records):
    """Run the configured judge mode (and the other one when comparing); returns result, summary fields."""
    q = cfg.quality
    run = {
        "logits": lambda: judge_logits(lm.model, lm.tokenizer, records, lm.device, cfg.max_tokens, q.max_chars),
        "generate": lambda: judge_generate(
            lm.model, lm.tokenizer, records, lm.device, cfg.max_tokens, q.max_new_tokens, q.max_chars
        )[0],
    }
    result = run[q.mode]()
    info: dict = {"mode": q.mode, "status": result.status_counts}
    if q.compare_modes:
        other_mode = "generate" if q.mode == "logits" else "logits"
        other = run[other_mode]()
        info["other_mode_status"] = other.status_counts
        info["agreement"] = agreement(result.mean, other.mean)
    return result, info


def diagnose_dataset(
    data_path: str | Path,
    base_model: str | Path,
    current_model: str | Path,
    out_dir: str | Path,
    summary_path: str | Path,
    cfg: DiagnoseConfig,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict:
    """Score every record of ``data_path`` and write ``out_dir/{scores.parquet, flagged_*.jsonl, *.png}``.

    The base model only gives one loss, so it is loaded, used and freed before the current model, which gives the
    other loss, the prompt embeddings and the quality judgements: at most one model is in memory at a time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_records(data_path)

    base = load_model(base_model, device, dtype, trust_remote_code)
    enc = tokenize_for_loss(base.tokenizer, records, cfg.complexity.max_length)
    loss_base = response_losses(
        base.model, enc, base.tokenizer.pad_token_id, base.device, cfg.max_tokens, desc="loss(base)"
    )
    del base
    gc.collect()

    cur = load_model(current_model, device, dtype, trust_remote_code)
    enc = tokenize_for_loss(cur.tokenizer, records, cfg.complexity.max_length)
    loss_cur = response_losses(
        cur.model, enc, cur.tokenizer.pad_token_id, cur.device, cfg.max_tokens, desc="loss(current)"
    )
    emb = prompt_embeddings(
        cur.model,
        cur.tokenizer,
        [r.prompt_text for r in records],
        cur.device,
        cfg.diversity.max_length,
        cfg.max_tokens,
    )
    k = min(cfg.diversity.k, len(records) - 1)
    knn = knn_similarity(emb, k, cur.device)
    quality, quality_info = _quality(cfg, cur, records)
    del cur
    gc.collect()

    flags_c, t_c = flag_complexity(loss_base, loss_cur, cfg.complexity.m)
    flags_d, t_d = flag_diversity(knn, cfg.diversity.m)
    flags_q, t_q = flag_quality(quality.mean, cfg.quality.m)

    table = pl.DataFrame(
        {
            "id": [r.id for r in records],
            "loss_base": loss_base,
            "loss_current": loss_cur,
            "knn_sim": knn,
            **{f"q_{j}": quality.scores[:, i] for i, j in enumerate(JUDGEMENTS)},
            "quality": quality.mean,
            "flag_complexity": flags_c,
            "flag_diversity": flags_d,
            "flag_quality": flags_q,
        }
    )
    buf = io.BytesIO()
    table.write_parquet(buf)
    atomic_write_bytes(out_dir / "scores.parquet", buf.getvalue())
    for axis, mask in (("complexity", flags_c), ("diversity", flags_d), ("quality", flags_q)):
        write_jsonl([r for r, f in zip(records, mask) if f], out_dir / f"flagged_{axis}.jsonl")

    thresholds = {**t_c, **t_d, **t_q}
    histogram(
        loss_base,
        {"threshold": t_c["loss_base"].value},
        out_dir / "hist_loss_base.png",
        "Response loss, base model",
        "mean token cross-entropy",
    )
    histogram(
        loss_cur,
        {"threshold": t_c["loss_current"].value},
        out_dir / "hist_loss_current.png",
        "Response loss, current model",
        "mean token cross-entropy",
    )
    histogram(
        knn,
        {"threshold": t_d["knn_sim"].value},
        out_dir / "hist_knn_sim.png",
        f"Mean cosine similarity to {k} nearest neighbours",
        "similarity",
    )
    histogram(
        quality.mean,
        {"threshold": t_q["quality"].value},
        out_dir / "hist_quality.png",
        f"Judged quality ({quality_info['mode']})",
        "score 0-10",
    )

    any_flag = flags_c | flags_d | flags_q
    summary = {
        "n": len(records),
        "flagged": {
            "complexity": int(flags_c.sum()),
            "diversity": int(flags_d.sum()),
            "quality": int(flags_q.sum()),
            "any": int(any_flag.sum()),
            "multiple": int(((flags_c + flags_d + flags_q) > 1).sum()),
        },
        "unscored": {
            "loss_base": int(np.isnan(loss_base).sum()),
            "loss_current": int(np.isnan(loss_cur).sum()),
            "quality": int(np.isnan(quality.mean).sum()),
        },
        "thresholds": {
            name: {"mean": t.mean, "std": t.std, "m": t.m, "value": t.value, "direction": t.direction}
            for name, t in thresholds.items()
        },
        "quality": quality_info,
        "k": k,
    }
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(summary_path, json.dumps({"diagnose": summary}, indent=2) + "\n")
    return summary
