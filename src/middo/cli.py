"""The ``middo`` command: tools around the pipeline (validate and apply params, compare dataset versions, tell a
real accuracy change from noise, check a run against the committed ``dvc.lock``, plan a refine round's teacher
requests and cost before paying for them, read the experiments round by round).

The pipeline's steps are the ``stages/*.py`` scripts that ``dvc.yaml`` runs; run one by hand with the same command
line (``python stages/train.py --help``), or ``dvc repro STAGE``.
"""

from __future__ import annotations

import argparse
import sys

from middo import __version__
from middo.errors import MiddoError


def _diff(args: argparse.Namespace) -> None:
    from middo.diff import diff_records, load_version, render

    d = diff_records(load_version(args.a, args.repo), load_version(args.b, args.repo))
    print(render(d, args.a, args.b, args.show), end="")


def _compare(args: argparse.Namespace) -> None:
    import json

    from middo.config import load_params
    from middo.dataio.atomic import atomic_write_text
    from middo.evaluate.compare import compare_results, load_details, render

    if args.bootstrap is None or args.seed is None:
        p = load_params(args.params)
        args.bootstrap = p.eval.bootstrap if args.bootstrap is None else args.bootstrap
        args.seed = p.base.seed if args.seed is None else args.seed
    result = compare_results(
        load_details(args.a, args.repo), load_details(args.b, args.repo), resamples=args.bootstrap, seed=args.seed
    )
    print(render(result, args.a, args.b), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps({"a": args.a, "b": args.b, **result}, indent=2) + "\n")


def _export(args: argparse.Namespace) -> None:
    from middo.export import export_command

    print(export_command(args.data, args.round, args.format, args.out))


def _check_params(args: argparse.Namespace) -> None:
    from middo.config import load_params, to_dict

    params = load_params(args.params)
    print(f"{args.params}: ok ({len(to_dict(params))} sections)")


def _params_apply(args: argparse.Namespace) -> None:
    from middo.presets import apply_preset

    changed = apply_preset(args.params, args.preset)
    print(f"{args.params}: {len(changed)} value(s) from {args.preset}: {', '.join(changed) or 'none'}")


def _plan(args: argparse.Namespace) -> None:
    import json

    from middo.config import load_params
    from middo.dataio.atomic import atomic_write_text
    from middo.refine.plan import render_plan
    from middo.refine.run import plan_for, read_round

    p = load_params(args.params)
    key = str(args.round)
    if key not in p.rounds:
        raise MiddoError(f"round {args.round}: not in {args.params} rounds ({', '.join(p.rounds) or 'none'})")
    data = args.data or f"data/round_{p.rounds[key]}/train.jsonl"  # dvc.yaml's refine stage paths
    diagnosis = args.diagnosis or f"metrics/round_{key}/diagnosis"
    r = p.refine
    inputs = read_round(data, diagnosis, r.selection, p.base.seed, args.round)
    plan = plan_for(
        inputs,
        r.teacher,
        p.base.seed,
        p.base.device,
        p.base.dtype,
        args.round,
        merge=r.merge,
        precedence=r.precedence,
        max_added_fraction=r.max_added_fraction,
    )
    print(render_plan(plan), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(plan, indent=2) + "\n")


def _verify_lock(args: argparse.Namespace) -> None:
    from middo.lockcheck import verify_lock

    result, report = verify_lock(args.repo, args.rev)
    print(report, end="")
    if not result.ok:
        raise SystemExit(1)


def _exp(args: argparse.Namespace) -> None:
    from middo.exp_table import dvc_exp_show, render, table_rows

    problems: list[str] = []
    print(render(table_rows(dvc_exp_show(args.repo, args.dvc_args), problems), markdown=args.md), end="")
    for line in problems:
        print(f"middo exp: warning: {line}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="middo",
        description="Tools around the Middo pipeline. The steps themselves are the stages/*.py scripts "
        "that dvc.yaml runs (dvc repro STAGE).",
    )
    parser.add_argument("--version", action="version", version=f"middo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("diff", help="what changed between two dataset versions, per axis, with lineage")
    p.add_argument("a", help="round (2, round_2), JSONL path, or REV:round / REV:path (any git rev)")
    p.add_argument("b")
    p.add_argument("--repo", default=".")
    p.add_argument("--show", type=int, default=5, help="examples per kind")
    p.set_defaults(func=_diff)

    p = sub.add_parser(
        "compare",
        help="is B's accuracy different from A's beyond noise? paired per item, per suite and on average",
        description="Pair two evaluations item by item (suite, id) and give per suite and for the average: both "
        "accuracies, B - A with a paired-bootstrap 95% interval, McNemar's exact p-value, and a verdict "
        "(outside noise when the interval excludes 0).",
    )
    side = "an eval_details.jsonl, a round folder (metrics/round_1), or REV:PATH (git revision or DVC experiment)"
    p.add_argument("a", help=f"the reference evaluation: {side}")
    p.add_argument("b", help="the evaluation judged against A, same forms")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples (default: eval.bootstrap from --params)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: base.seed from --params)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--repo", default=".", help="repository that REV:PATH and relative paths refer to (default: .)")
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "export",
        help="write one round's dataset as alpaca, sharegpt, openai or parquet (+ LLaMA-Factory dataset_info.json)",
    )
    p.add_argument("round", type=int, help="round number (0 = the imported seed)")
    p.add_argument("--format", required=True, choices=("alpaca", "sharegpt", "openai", "parquet"))
    p.add_argument("--out", help="output file (default: exports/round_R.<format extension>)")
    p.add_argument("--data", default="data", help="folder holding round_R/train.jsonl (default: data)")
    p.set_defaults(func=_export)

    p = sub.add_parser("check-params", help="validate params.yaml and report every problem at once")
    p.set_defaults(func=_check_params)

    p = sub.add_parser("params", help="params.yaml tools: `middo params apply presets/paper.yaml`")
    params_sub = p.add_subparsers(dest="params_command", required=True, metavar="ACTION")
    q = params_sub.add_parser("apply", help="merge a preset into params.yaml (validated, atomic, comments kept)")
    q.add_argument("preset", help="a presets/*.yaml file")
    q.add_argument("--params", default="params.yaml", help="params file to update (default: params.yaml)")
    q.set_defaults(func=_params_apply)

    p = sub.add_parser(
        "plan",
        help="what refine will send the teacher for a round, and its cost, before anything is sent",
        description="Read the round's data and diagnosis and the teacher cache, and print per operation the "
        "requests refine will send, how many are cached, estimated prompt tokens (the real prompts, tokenized) and "
        "completion tokens (the cache's history, else max_new_tokens), and the cost at refine.teacher.price. "
        "No request is sent and no model is loaded (only a tokenizer).",
    )
    p.add_argument("round", type=int, help="the round to plan (a key of rounds in params.yaml)")
    p.add_argument("--data", help="the data it refines (default: data/round_P/train.jsonl, P its parent round)")
    p.add_argument("--diagnosis", help="its diagnosis folder (default: metrics/round_R/diagnosis)")
    p.add_argument("--json", metavar="OUT", help="also write the plan as JSON to OUT")
    p.set_defaults(func=_plan)

    p = sub.add_parser(
        "verify-lock",
        help="did this run reproduce the committed one? names the first stage that differs and why",
        description="Compare the workspace dvc.lock and env records (metrics/round_R/env/) with those committed at "
        "--rev, stage by stage in pipeline order. Verdict: reproduced (exit 0); differs only where the machine "
        "differs (device, dtype, CPU flags; exit 0); NOT reproduced (an input, a library version, or nothing "
        "explains it; exit 1).",
    )
    p.add_argument("--rev", default="HEAD", help="git revision holding the reference dvc.lock (default: HEAD)")
    p.add_argument("--repo", default=".")
    p.set_defaults(func=_verify_lock)

    p = sub.add_parser(
        "exp",
        help="the experiment table in long form: a line per experiment and round, as narrow as a terminal",
        description="Run `dvc exp show --json` and print one line per experiment (the workspace, each commit, each "
        "experiment) and round: samples trained on, flagged samples, train loss, average accuracy and its 95% "
        "interval, and beside each experiment the params it changed from the commit it ran from (the workspace: "
        "from HEAD). Its width does not grow with the rounds. More `dvc exp show` options after --, e.g. "
        "`middo exp -- -A`.",
    )
    p.add_argument("--md", action="store_true", help="a Markdown table")
    p.add_argument("--repo", default=".")
    p.add_argument("dvc_args", nargs="*", help="options passed on to `dvc exp show` (after --)")
    p.set_defaults(func=_exp)

    for name, p in sub.choices.items():
        if name in ("params", "exp"):
            continue
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MiddoError as exc:
        print(f"middo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
