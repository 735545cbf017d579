"""Where the train stage's time goes, and the demo's training before/after, against the CPU's compute floor.

    .venv/bin/python bench/bench_train_profile.py    # 3 rounds x {float32, bfloat16} x {before, trl-head, after}
    .venv/bin/python bench/bench_train_profile.py --reps 1 --dtypes float32 --variants before   # one profile

Each run is a fresh subprocess (so the first step's warm-up and the imports are counted, as in ``dvc repro``) that
trains ``train_sft``'s own pieces (:func:`middo.train.build_trainer`, ``trainer.train()``,
:func:`middo.train.save_checkpoint`, :class:`middo.train.LiveCurves`) on the demo's inputs: ``params.yaml``'s
``train`` section (batch 4, max_length 384) and the first ``--samples`` (32) seed records. Timers wrap the pieces
(model load, tokenization, collation, forward, backward, optimizer, DVCLive, checkpoint). The same process measures
the matmul rate at the dtype the model computes in, so the floor (6 x parameters FLOPs per token) is of that moment.

``float32`` runs emulate a float32-only AVX2 CPU on a machine that has more: ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (torch's
BLAS here is MKL), ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2`` (torch's own vector kernels). Variants
alternate inside each round (before, after; the next round after, before) so that other work on the machine hits
both alike; the report gives the median of the rounds. ``before`` is ``train.padding_free: false`` (the default);
``trl-head`` is ``true`` with TRL's own loss (its fused LM head, which on a CPU projects every position); ``after`` is
``true`` with the train stage's CPU loss, which projects the response positions alone (:mod:`middo.response_loss`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# name: (train config changes, the CPU loss from the response positions' logits alone: middo.response_loss)
VARIANTS = {
    "before": ({"padding_free": False}, True),  # padded batches: several rows, so TRL's loss path either way
    "trl-head": ({"padding_free": True}, False),  # padding-free, TRL's fused LM head (its CPU fallback)
    "after": ({"padding_free": True}, True),  # what the train stage runs
}
PHASES = (
    "imports",
    "model_load",
    "tokenize",
    "trainer_other",
    "first_step",
    "forward",
    "backward",
    "optimizer",
    "collate",
    "dvclive",
    "step_other",
    "train_other",
    "checkpoint",
)


class Timer:
    """Seconds summed per phase name."""

    def __init__(self):
        self.total: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.total[name] = self.total.get(name, 0.0) + seconds

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return timed


def child(args) -> dict:
    """One training run with timers; returns the phase seconds and the throughput numbers."""
    t0 = time.perf_counter()
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    import middo.train as mt
    from middo.config import load_params
    from middo.distributed import from_env

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import bench_records, machine_info, measure_matmul_flops

    timer = Timer()
    timer.add("imports", time.perf_counter() - t0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    flops = measure_matmul_flops("cpu", dtype, n=1024, repeats=20)
    cpu_start = time.process_time()
    measure_matmul_flops("cpu", dtype, n=1024, repeats=20)  # again, in CPU seconds: 21 products (warm-up included)
    cpu_flops = 2.0 * 1024**3 * 21 / (time.process_time() - cpu_start)
    params = load_params(args.params)
    changes, response_logits_only = VARIANTS[args.variant]
    cfg = replace(params.train, max_steps=args.steps, **changes)
    records = bench_records(args.samples)
    load = AutoModelForCausalLM.from_pretrained
    AutoModelForCausalLM.from_pretrained = timer.wrap("model_load", load)
    mt.training_rows = timer.wrap("tokenize", mt.training_rows)
    out = Path(tempfile.mkdtemp(prefix="middo-train-profile-"))
    start = time.perf_counter()
    trainer = mt.build_trainer(records, args.model, out / "trainer", cfg, 42, "cpu", args.dtype, False)
    timer.add("trainer_other", time.perf_counter() - start - timer.total["model_load"] - timer.total["tokenize"])
    AutoModelForCausalLM.from_pretrained = load
    trainer.data_collator = timer.wrap("collate", trainer.data_collator)
    trainer.response_logits_only = response_logits_only
    live = mt.LiveCurves(out / "live")
    live.on_log = timer.wrap("dvclive", live.on_log)
    live.on_train_end = timer.wrap("dvclive", live.on_train_end)
    trainer.add_callback(live)
    steps: list[float] = []
    marks: dict[str, float] = {}

    def forward_start(module, inputs, kwargs=None):
        marks["forward"] = time.perf_counter()

    def forward_end(module, inputs, kwargs_or_output, output=None):
        timer.add("forward" if steps else "first_forward", time.perf_counter() - marks["forward"])
        marks["backward"] = time.perf_counter()

    class Phases(TrainerCallback):
        def on_step_begin(self, *a, **k):
            marks["step"] = time.perf_counter()

        def on_pre_optimizer_step(self, *a, **k):
            timer.add("backward" if steps else "first_backward", time.perf_counter() - marks["backward"])
            marks["optimizer"] = time.perf_counter()

        def on_optimizer_step(self, *a, **k):
            timer.add("optimizer" if steps else "first_optimizer", time.perf_counter() - marks["optimizer"])

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - marks["step"])

    trainer.model.register_forward_pre_hook(forward_start, with_kwargs=True)
    trainer.model.register_forward_hook(forward_end, with_kwargs=True)
    trainer.add_callback(Phases())
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    start = time.perf_counter()
    mt.save_checkpoint(trainer, out / "model", out / "model", args.model, cfg, from_env("gloo"), False)
    timer.add("checkpoint", time.perf_counter() - start)
    shutil.rmtree(out, ignore_errors=True)  # a checkpoint per run (270-540 MB) would fill /tmp
    t = timer.total
    in_steps = sum(steps[1:])
    timer.add("first_step", steps[0])
    timer.add("step_other", in_steps - sum(t.get(k, 0.0) for k in ("forward", "backward", "optimizer")))
    timer.add("train_other", train_s - sum(steps) - t.get("collate", 0.0) - t.get("dvclive", 0.0))
    logs = trainer.state.log_history
    tokens = int([h["num_tokens"] for h in logs if "num_tokens" in h][-1])
    n_params = sum(p.numel() for p in trainer.model.parameters())
    padded = sum(len(r) for r in trainer.train_dataset["input_ids"])
    floor_tps = flops / (6 * n_params)
    losses = [h["loss"] for h in logs if "loss" in h]
    # after the first step (tokens taken as equal per step): the rate once the warm-up is paid
    steady = tokens * (len(steps) - 1) / len(steps) / in_steps if len(steps) > 1 else None
    return {
        "variant": args.variant,
        "dtype": args.dtype,
        "steps": len(steps),
        "tokens": tokens,
        "dataset_tokens": padded,
        "train_s": train_s,
        "tokens_per_s": tokens / train_s,
        # CPU seconds of this process: what the work cost, much less inflated than wall time when others share cores
        "train_cpu_s": train_cpu_s,
        "tokens_per_cpu_s": tokens / train_cpu_s,
        "matmul_gflops_per_cpu_s": cpu_flops / 1e9,
        "floor_frac_cpu": tokens / train_cpu_s / (cpu_flops / (6 * n_params)),
        "steady_tokens_per_s": steady,
        "matmul_gflops": flops / 1e9,
        "floor_tokens_per_s": floor_tps,
        "floor_frac": tokens / train_s / floor_tps,
        "steady_floor_frac": steady / floor_tps if steady else None,
        "stage_s": time.perf_counter() - t0,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "phases_s": {k: round(v, 3) for k, v in timer.total.items()},
        "machine": machine_info(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--variants", default="before,trl-head,after")
    ap.add_argument("--samples", type=int, default=32, help="seed records (the demo's data.limit)")
    ap.add_argument("--steps", type=int, default=-1, help="train.max_steps (-1: the whole epoch, as the demo)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default=str(ROOT / ".cache/models/smollm2-135m-instruct"))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench/results/train_profile_cpu.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import report

    load_before = os.getloadavg()
    runs: list[dict] = []
    for rep in range(args.reps):
        for dtype in args.dtypes.split(","):
            for variant in args.variants.split(",")[:: -1 if rep % 2 else 1]:  # ABBA: neither goes first always
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
                if dtype == "float32":
                    env.update(AVX2)
                cmd = [sys.executable, __file__, "--child", "--dtype", dtype, "--variant", variant]
                cmd += ["--samples", str(args.samples), "--steps", str(args.steps), "--threads", str(args.threads)]
                cmd += ["--model", args.model, "--params", args.params]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    sys.exit(f"{dtype}/{variant} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
                run = {"rep": rep, "loadavg": os.getloadavg()[0], **json.loads(line[0][7:])}
                runs.append(run)
                print(
                    f"rep {rep} {dtype:8} {variant:6} train {run['train_s']:.1f} s, {run['tokens_per_s']:.1f} tok/s "
                    f"({100 * run['floor_frac']:.0f}% of floor {run['floor_tokens_per_s']:.0f}), "
                    f"load {run['loadavg']:.1f}",
                    flush=True,
                )
                print("    " + ", ".join(f"{k} {v:.1f}" for k, v in run["phases_s"].items()), flush=True)
    rows = []
    for dtype in args.dtypes.split(","):
        for variant in args.variants.split(","):
            mine = [r for r in runs if r["dtype"] == dtype and r["variant"] == variant]
            med = {k: statistics.median(r[k] for r in mine) for k in ("train_s", "tokens_per_s", "stage_s")}
            med_floor = statistics.median(r["floor_frac"] for r in mine)
            phases = {p: statistics.median(r["phases_s"].get(p, 0.0) for r in mine) for p in PHASES}
            rows.append(
                {
                    "dtype": dtype,
                    "variant": variant,
                    "runs": len(mine),
                    "steps": mine[0]["steps"],
                    "tokens": mine[0]["tokens"],
                    "train_s": med["train_s"],
                    "tok_per_s": med["tokens_per_s"],
                    "floor_tok_per_s": statistics.median(r["floor_tokens_per_s"] for r in mine),
                    "floor_frac": med_floor,
                    "steady_floor_frac": statistics.median(r["steady_floor_frac"] or 0 for r in mine),
                    "process_s": med["stage_s"],
                    **{f"{p}_s": v for p, v in phases.items()},
                }
            )
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "float32_emulation": AVX2,
        "runs": runs,
    }
    report(rows, args.out, meta)


if __name__ == "__main__":
    main()
