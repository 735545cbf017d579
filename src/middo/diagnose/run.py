"""One round of diagnosis: measure the three signals, decide the flags, write the tables, plots and summary."""

from __future__ import annotations

import gc
import io
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from middo.config import DiagnoseConfig
from middo.dataio import write_jsonl
from middo.dataio.atomic import atomic_write_bytes, atomic_write_text
from middo.dataio.writers import read_records
from middo.device import resolve_device
from middo.diagnose.batching import windows
from middo.diagnose.complexity import response_losses, tokenize_for_loss
from middo.diagnose.diversity import knn_similarity, neighbour_ids, prompt_embeddings
from middo.diagnose.embedding_map import write_embedding_map
from middo.diagnose.quality import JUDGEMENTS, QualityResult, agreement, judge_generate, judge_logits
from middo.diagnose.quality_vllm import check_vllm, judge_vllm, uses_vllm
from middo.diagnose.thresholds import flag_complexity, flag_diversity, flag_quality
from middo.distributed import Shard, from_env, local_device, write_rank_report
from middo.errors import MiddoError
from middo.modeling import load_model
from middo.plots import histogram
from middo.provenance import device_name, dtype_name, environment, write_metrics


def _windowed(n: int, cfg: DiagnoseConfig, shard: Shard, desc: str, score, unit: str = "sample", per: int = 1):
    """Run ``score(window_range, bar)`` over consecutive windows and stack the results (one progress bar, counting
    ``per`` units per sample over this process's share)."""
    parts = []
    with tqdm(total=-(-n * per // shard.world), desc=desc, unit=unit, disable=not shard.is_main) as bar:
        for w in windows(n, cfg.window):
            with shard.part(desc, w.start, w.stop - w.start):  # the rank report's phase and window
                parts.append(score(w, bar))
    return np.concatenate(parts) if parts else np.empty(0)


def _losses(lm, records, cfg, shard, desc, max_length: int) -> np.ndarray:
    tok = lm.tokenizer

    def score(w, bar):
        enc = tokenize_for_loss(tok, records[w.start : w.stop], max_length)
        return response_losses(lm.model, enc, tok.pad_token_id, lm.device, cfg.max_tokens, shard=shard, bar=bar)

    return _windowed(len(records), cfg, shard, desc, score)


def _embeddings(lm, records, cfg, shard) -> np.ndarray:
    def score(w, bar):
        texts = [r.prompt_text for r in records[w.start : w.stop]]
        return prompt_embeddings(
            lm.model, lm.tokenizer, texts, lm.device, cfg.diversity.max_length, cfg.max_tokens, shard=shard, bar=bar
        )

    return _windowed(len(records), cfg, shard, "embed", score)


def _free_gpu(lm) -> None:
    """vLLM's child process needs the GPU memory the HF model holds; nothing uses the model after the judge."""
    if lm.device.type == "cuda":
        lm.model.to("meta")
        gc.collect()
        torch.cuda.empty_cache()


def _judge_vllm(lm, records, cfg, shard, vllm: dict) -> QualityResult:
    q = cfg.quality
    _free_gpu(lm)
    with shard.part("quality(generate)", 0, len(records)):  # the rank report's phase: every judgement this rank sent
        result, _ = judge_vllm(
            vllm["model_path"],
            lm.tokenizer,
            records,
            python=vllm["python"],
            dtype=dtype_name(lm.dtype),
            gpu_index=lm.device.index or 0,
            max_new_tokens=q.max_new_tokens,
            temperature=q.temperature,
            top_p=q.top_p,
            top_k=q.top_k,
            cutoff=q.cutoff,
            max_chars=q.max_chars,
            gpu_memory_utilization=q.gpu_memory_utilization,
            trust_remote_code=vllm["trust_remote_code"],
            shard=shard,
        )
    return result


def _judge(mode: str, lm, records, cfg, shard, vllm: dict | None = None) -> QualityResult:
    q = cfg.quality
    if mode == "generate" and vllm is not None:
        return _judge_vllm(lm, records, cfg, shard, vllm)
    counts: dict[str, int] = {}

    def score(w, bar):
        part = records[w.start : w.stop]
        if mode == "logits":
            res = judge_logits(
                lm.model,
                lm.tokenizer,
                part,
                lm.device,
                cfg.max_tokens,
                q.max_chars,
                shard=shard,
                bar=bar,
                cutoff=q.cutoff,
            )
        else:
            res = judge_generate(
                lm.model,
                lm.tokenizer,
                part,
                lm.device,
                cfg.max_tokens,
                q.max_new_tokens,
                q.max_chars,
                shard=shard,
                bar=bar,
                temperature=q.temperature,
                top_p=q.top_p,
                top_k=q.top_k,
                cutoff=q.cutoff,
                seed=w.start * len(JUDGEMENTS),  # the first judgement's index in the whole dataset
            )[0]
        for k, v in res.status_counts.items():
            counts[k] = counts.get(k, 0) + v
        return res.scores

    n_j = len(JUDGEMENTS)
    scores = _windowed(len(records), cfg, shard, f"quality({mode})", score, "judgement", n_j)
    return QualityResult(scores.reshape(len(records), n_j), counts)


def _quality(cfg, lm, records, shard, seconds: dict[str, float], vllm: dict | None = None):
    """Run the configured judge mode (and the other one when comparing); returns result, summary fields.

    ``vllm`` (``python``, ``model_path``, ``trust_remote_code``) sends the generate judge to vLLM, which takes the
    HF model's GPU memory: that mode then runs last. Each mode's wall time goes to ``seconds[mode]``, not into the
    summary, which must not vary between runs.
    """
    q = cfg.quality
    modes = [q.mode] + (["generate" if q.mode == "logits" else "logits"] if q.compare_modes else [])
    results: dict[str, QualityResult] = {}
    for mode in sorted(modes, key=lambda m: vllm is not None and m == "generate"):
        clock = time.perf_counter()
        results[mode] = _judge(mode, lm, records, cfg, shard, vllm)
        seconds[mode] = time.perf_counter() - clock
    result = results[q.mode]
    info: dict = {
        "mode": q.mode,
        "status": result.status_counts,
        "unparseable": result.status_counts.get("unparseable", 0),
    }
    if vllm is not None:  # said only when vLLM decoded: an HF diagnosis's summary stays as the reference run's
        info["engine"] = "vllm"
    if q.compare_modes:
        other = results[modes[1]]
        info["other_mode_status"] = other.status_counts
        info["agreement"] = agreement(result.mean, other.mean)
    return result, info


def check_enough_samples(data_path: str | Path, n: int, k: int) -> None:
    """Each sample needs ``k`` other samples as neighbours, so diversity cannot be measured on ``k`` or fewer.

    Raises:
        MiddoError: ``n < k + 1``, naming the data file (its path says which round) and the param to change.
    """
    if n < k + 1:
        raise MiddoError(
            f"{data_path}: {n} sample(s), but diagnose.diversity.k={k} needs at least k+1 = {k + 1} (each sample is "
            f"compared with its {k} nearest neighbours); lower diagnose.diversity.k or diagnose a larger dataset"
        )


def diagnose_metrics(summary: dict) -> dict:
    """The numbers of a diagnosis worth a column in ``dvc exp show``: how many samples, how many flagged per axis,
    how many could not be scored, and each signal's threshold. The rest (m, direction, judge statuses) is settings or
    detail, kept in the diagnosis folder's ``summary.json``."""
    return {
        "n": summary["n"],
        "flagged": summary["flagged"],
        "unscored": summary["unscored"],
        "threshold": {name: t["value"] for name, t in summary["thresholds"].items()},
    }


def diagnose_dataset(
    data_path: str | Path,
    base_model: str | Path,
    current_model: str | Path,
    out_dir: str | Path,
    summary_path: str | Path,
    cfg: DiagnoseConfig,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    *,
    max_length: int,
    shard: Shard | None = None,
) -> dict:
    """Score every record of ``data_path`` and write ``out_dir/{scores.parquet, flagged_*.jsonl, *.png}``.

    ``max_length`` is the training cut (``train.max_length``): losses are measured on the tokens training sees.
    ``embeddings.npy`` (float16) and ``embedding_map.{json,png}`` show where the samples sit, sparse ones and ones
    earlier rounds' teacher wrote marked (:mod:`middo.diagnose.embedding_map`).
    ``scores.parquet`` has one row per record: the signals, the six quality judgements, the flags, and
    ``neighbors``, the ids of the record's ``k`` nearest neighbours by prompt embedding (most similar first), which
    refining gives the teacher as hints.

    The base model only gives one loss, so it is loaded, used and freed before the current model, which gives the
    other loss, the prompt embeddings and the quality judgements: at most one model is in memory at a time.

    Under ``torchrun`` (``shard`` from the environment by default) every process scores its share of the batches,
    the scores are merged on all of them, and rank 0 alone writes the outputs.

    ``summary_path`` holds ``{"diagnose": numbers}`` (:func:`diagnose_metrics`), its env record the versions, device
    and dtype used; the whole summary (each threshold's mean, std, m and direction, the judge's statuses) goes to
    ``out_dir/summary.json``.

    Raises:
        MiddoError: fewer than ``diagnose.diversity.k + 1`` samples (checked before any model is loaded), or a
            model folder that cannot be loaded.
    """
    shard = from_env() if shard is None else shard
    device = local_device(device)
    out_dir = Path(out_dir)
    records = read_records(data_path)
    k = cfg.diversity.k
    check_enough_samples(data_path, len(records), k)
    # before any model is loaded: a judge that cannot run should cost seconds, not the loss passes
    vllm_python = check_vllm(cfg.quality.vllm_python, resolve_device(device).type) if uses_vllm(cfg.quality) else None

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    base = load_model(base_model, device, dtype, trust_remote_code)
    loss_base = _losses(base, records, cfg, shard, "loss(base)", max_length)
    del base
    gc.collect()
    seconds["loss_base"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cur = load_model(current_model, device, dtype, trust_remote_code)
    env = environment(device=device_name(cur.device), dtype=dtype_name(cur.dtype))
    loss_cur = _losses(cur, records, cfg, shard, "loss(current)", max_length)
    seconds["loss_current"] = time.perf_counter() - clock
    clock = time.perf_counter()
    emb = _embeddings(cur, records, cfg, shard)
    seconds["embed"] = time.perf_counter() - clock
    clock = time.perf_counter()
    knn, neighbour_idx = knn_similarity(emb, k, cur.device, return_indices=True)
    seconds["knn"] = time.perf_counter() - clock
    clock = time.perf_counter()
    mode_seconds: dict[str, float] = {}
    vllm = None
    if vllm_python is not None:
        vllm = {"python": vllm_python, "model_path": str(current_model), "trust_remote_code": trust_remote_code}
    quality, quality_info = _quality(cfg, cur, records, shard, mode_seconds, vllm)
    seconds["quality"] = time.perf_counter() - clock
    del cur
    gc.collect()
    write_rank_report("diagnose", shard, [r.id for r in records], device=env["device"])
    if not shard.is_main:
        shard.barrier()  # rank 0 writes; the others wait so that the launcher ends when the outputs exist
        return {}

    flags_c, t_c = flag_complexity(loss_base, loss_cur, cfg.complexity.m)
    flags_d, t_d = flag_diversity(knn, cfg.diversity.m)
    flags_q, t_q = flag_quality(quality.mean, cfg.quality.m)

    ids = [r.id for r in records]
    table = pl.DataFrame(
        {
            "id": ids,
            "loss_base": loss_base,
            "loss_current": loss_cur,
            "knn_sim": knn,
            "neighbors": pl.Series(neighbour_ids(ids, neighbour_idx), dtype=pl.List(pl.String)),
            **{f"q_{j}": quality.scores[:, i] for i, j in enumerate(JUDGEMENTS)},
            "quality": quality.mean,
            "flag_complexity": flags_c,
            "flag_diversity": flags_d,
            "flag_quality": flags_q,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
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

    emb_map = write_embedding_map(
        emb,
        ids,
        [r.op for r in records],
        flags_d,
        out_dir,
        f"Prompt embeddings, {len(records)} samples (PCA)",
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
        "embedding_map": emb_map,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    write_metrics(summary_path, {"diagnose": diagnose_metrics(summary)}, env)
    shard.barrier()
    # timings go to the caller (CLI, benchmarks), not into diagnose.json: that file is a DVC metric and must be
    # identical across identical runs; "seconds" are the stage's parts, "quality_seconds" each judge mode's share
    return {**summary, "seconds": seconds, "quality_seconds": mode_seconds}
