"""The ``middo`` command: one subcommand per pipeline step, each a thin call into the package.

DVC stages (``stages/*.py``) call the same functions; this CLI is for people running a step by hand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from middo import __version__
from middo.errors import MiddoError


def _under_torchrun(processes: int, args: argparse.Namespace) -> bool:
    """Re-run this very command under torchrun with ``processes`` workers; False when already inside one (or 1).

    This is what ``base.processes`` does: the stage command in dvc.yaml stays the same on one CPU or eight GPUs.
    """
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return False
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    code = subprocess.call([*launcher, "-m", "middo", *args.argv])
    if code != 0:
        raise MiddoError(f"torchrun with {processes} processes exited with status {code} (see the log above)")
    return True


def _base_model(args: argparse.Namespace) -> None:
    from middo.base_model import materialise
    from middo.config import load_params

    p = load_params(args.params)
    materialise(args.spec or p.model.base, args.out, allow_download=p.model.allow_download)
    print(f"base model ready in {args.out}")


def _import(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.ingest import import_dataset

    p = load_params(args.params)
    counts = import_dataset(
        args.source or p.data.seed_path,
        args.out,
        args.metrics,
        fmt=p.data.format,
        split=p.data.split,
        limit=p.data.limit,
    )
    print(counts)


def _diagnose(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.diagnose.run import diagnose_dataset

    p = load_params(args.params)
    if _under_torchrun(p.base.processes, args):
        return
    summary = diagnose_dataset(
        args.data,
        args.base,
        args.current,
        args.out,
        args.summary,
        p.diagnose,
        p.base.device,
        p.base.dtype,
        p.model.trust_remote_code,
    )
    if summary:  # empty on torchrun ranks other than 0, which write nothing
        print(f"round {args.round}: flagged {summary['flagged']} of {summary['n']}")
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))


def _refine(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.refine.run import refine_round

    p = load_params(args.params)
    r = refine_round(
        args.data,
        args.diagnosis,
        args.out,
        args.metrics,
        args.summary,
        args.round,
        p.refine.precedence,
        p.refine.max_added_fraction,
        p.refine.teacher,
        p.base.seed,
        p.base.device,
        p.base.dtype,
    )
    print(
        f"round {args.round}: {r['size_before']} -> {r['size_after']} records "
        f"(replaced {r['replaced']}, added {r['added']})"
    )


def _train(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.dataio.writers import read_records
    from middo.train import train_sft

    p = load_params(args.params)
    m = train_sft(
        read_records(args.data),
        args.base,
        args.out,
        p.train,
        p.base.seed,
        p.base.device,
        p.base.dtype,
        p.model.trust_remote_code,
        metrics_path=args.metrics,
    )
    print(
        f"round {args.round}: {m['steps']} steps, loss {m['first_loss']} -> {m['last_loss']}, "
        f"{m['seconds']:.0f} s ({m['tokens_per_second']} tokens/s)"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.evaluate import evaluate_model

    p = load_params(args.params)
    if _under_torchrun(p.base.processes, args):
        return
    res = evaluate_model(
        args.model,
        list(p.eval.suites),
        p.eval.limit,
        args.out,
        p.base.device,
        p.base.dtype,
        p.eval.max_new_tokens,
        p.base.seed,
    )
    print(f"round {args.round}: average {res['average']:.3f} {res['accuracy']}")


def _summarize(args: argparse.Namespace) -> None:
    from middo.config import load_params
    from middo.summarize import summarize

    p = load_params(args.params)
    rounds = [0, *(int(r) for r in p.rounds)]
    s = summarize(args.metrics, rounds, args.out, args.plots)
    for row in s["rounds"]:
        print(f"round {row['round']}: average {row['average']}, size {row['dataset_size']}, flagged {row['flagged']}")


def _diff(args: argparse.Namespace) -> None:
    from middo.diff import diff_records, load_version, render

    d = diff_records(load_version(args.a, args.repo), load_version(args.b, args.repo))
    print(render(d, args.a, args.b, args.show), end="")


def _check_params(args: argparse.Namespace) -> None:
    from middo.config import load_params, to_dict

    params = load_params(args.params)
    print(f"{args.params}: ok ({len(to_dict(params))} sections)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="middo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"middo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("base-model", help="materialise model.base as a HF folder (converts the embedded GGUF)")
    p.add_argument("--out", default="models/base")
    p.add_argument("--spec", help="override model.base")
    p.set_defaults(func=_base_model)

    p = sub.add_parser("import", help="read a dataset (Alpaca/ShareGPT/OpenAI/Parquet/HF) into round 0 JSONL")
    p.add_argument("--source", help="override data.seed_path")
    p.add_argument("--out", default="data/round_0")
    p.add_argument("--metrics", default="metrics/round_0/import.json")
    p.set_defaults(func=_import)

    p = sub.add_parser("diagnose", help="score every sample on complexity, diversity and quality; flag outliers")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--data", required=True, help="the dataset JSONL being diagnosed")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--current", required=True, help="model fine-tuned on --data")
    p.add_argument("--out", required=True, help="folder for scores.parquet, flagged_*.jsonl, plots")
    p.add_argument("--summary", required=True, help="summary metrics JSON")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("refine", help="simplify, diversify and improve flagged samples with the teacher")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--diagnosis", required=True, help="folder written by `middo diagnose --out`")
    p.add_argument("--out", required=True, help="folder for the refined train.jsonl")
    p.add_argument("--metrics", required=True, help="folder for changes.jsonl and refine_report.md")
    p.add_argument("--summary", required=True, help="refine counts as a metrics JSON")
    p.set_defaults(func=_refine)

    p = sub.add_parser("train", help="SFT the base model on a round's dataset (TRL)")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", help="JSON for loss, steps and throughput (a DVC metric)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="run the offline benchmark suites on a checkpoint")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="eval metrics JSON")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("summarize", help="accuracy, size and flags per round (rounds from params) + plots")
    p.add_argument("--metrics", default="metrics", help="folder holding metrics/round_R/")
    p.add_argument("--out", default="reports/summary.json")
    p.add_argument("--plots", default="reports/plots")
    p.set_defaults(func=_summarize)

    p = sub.add_parser("diff", help="what changed between two dataset versions, per axis, with lineage")
    p.add_argument("a", help="round (2, round_2), JSONL path, or REV:round / REV:path (any git rev)")
    p.add_argument("b")
    p.add_argument("--repo", default=".")
    p.add_argument("--show", type=int, default=5, help="examples per kind")
    p.set_defaults(func=_diff)

    p = sub.add_parser("check-params", help="validate params.yaml and report every problem at once")
    p.set_defaults(func=_check_params)

    for p in sub.choices.values():
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except MiddoError as exc:
        print(f"middo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun, leave the process group cleanly (torch warns at exit otherwise).

    Only where a command already imported torch.distributed: light commands must not pay for importing torch.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
