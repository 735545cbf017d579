"""The ``middo`` command: one subcommand per pipeline step, each a thin call into the package.

DVC stages (``stages/*.py``) call the same functions; this CLI is for people running a step by hand.
"""

from __future__ import annotations

import argparse
import sys

from middo import __version__
from middo.errors import MiddoError


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
        args.source or p.data.seed_path, args.out, args.metrics, fmt=p.data.format, split=p.data.split,
        limit=p.data.limit,
    )
    print(counts)


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

    p = sub.add_parser("check-params", help="validate params.yaml and report every problem at once")
    p.set_defaults(func=_check_params)

    for p in sub.choices.values():
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
