"""MMLU ``loglik``: one forward pass per question (the four letters' next-token log-probabilities) against one pass
per letter, on the same real questions with the same model, alternating, median of ``--reps``.

    .venv/bin/python bench/bench_mmlu_loglik.py                          # 16 questions, float32, 3 rounds
    .venv/bin/python bench/bench_mmlu_loglik.py --n 64 --dtype auto

Both sides are :func:`middo.evaluate.generation.batch_choice_loglik` (``one_pass`` True / False), so the batching,
the chat template and the LM head on scored positions only are the same; what differs is 1 or 4 sequences per
question. ``max_abs_diff`` is the largest difference between the two sides' scores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, report  # noqa: E402

from middo.evaluate import mmlu  # noqa: E402
from middo.evaluate.generation import batch_choice_loglik  # noqa: E402
from middo.evaluate.items import select_items  # noqa: E402
from middo.modeling import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="questions (a seeded subset of the test split)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default=str(ROOT / ".cache/models/smollm2-135m-instruct"))
    ap.add_argument("--out", default=str(ROOT / "bench/results/mmlu_loglik_cpu.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    lm = load_model(args.model, "cpu", args.dtype)
    questions = [(mmlu.prompt(it), mmlu.LETTERS) for it in select_items(mmlu.read_items(), args.n, 42)]
    batch_choice_loglik(lm, questions[:2])  # warm-up, both paths share it
    times: dict[bool, list[float]] = {True: [], False: []}
    scores = {}
    for rep in range(args.reps):
        for one_pass in (True, False)[:: -1 if rep % 2 else 1]:
            start = time.perf_counter()
            scores[one_pass] = batch_choice_loglik(lm, questions, one_pass=one_pass, desc=f"one_pass={one_pass}")
            times[one_pass].append(time.perf_counter() - start)
    diff = max(
        abs(a - b)
        for x, y in zip(scores[True], scores[False], strict=True)
        for a, b in zip(x.logprob, y.logprob, strict=True)
    )
    four, one = statistics.median(times[False]), statistics.median(times[True])
    row = {
        "questions": args.n,
        "four_pass_s": four,
        "one_pass_s": one,
        "ratio": four / one,
        "four_pass_runs": times[False],
        "one_pass_runs": times[True],
        "max_abs_diff": diff,
    }
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dtype": str(lm.dtype),
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    report([row], args.out, meta)


if __name__ == "__main__":
    main()
