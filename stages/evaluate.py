"""Stage ``evaluate@R`` (``evaluate_seed``: round 0): benchmarks on a checkpoint. Run: ``dvc repro evaluate``."""

from middo.config import load_params
from middo.evaluate import evaluate_model
from middo.stage import parser, relaunched_under_torchrun, run


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--model", "--out"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--round", type=int, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    if relaunched_under_torchrun(p.base.processes):
        return
    res = evaluate_model(
        model_path=args.model,
        suites=list(p.eval.suites),
        limit=p.eval.limit,
        out_path=args.out,
        device=p.base.device,
        dtype=p.base.dtype,
        max_new_tokens=p.eval.max_new_tokens,
        seed=p.base.seed,
    )
    if res:  # empty on torchrun ranks other than 0
        print(f"round {args.round}: average {res['average']:.3f} {res['accuracy']}")


if __name__ == "__main__":
    raise SystemExit(run("evaluate", main))
