"""Stage ``evaluate@R`` (``evaluate_seed``: round 0): benchmarks on a checkpoint. Run: ``dvc repro evaluate``."""

from middo.config import load_params
from middo.evaluate.backends import describe, evaluate_backend
from middo.stage import parser, relaunched_under_torchrun, run


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--model", "--out"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--round", type=int, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    # the builtin suites shard over base.processes; the harnesses run their own launchers
    if p.eval.backend == "builtin" and relaunched_under_torchrun(p.base.processes, p.base.device):
        return
    res = evaluate_backend(p.eval, args.model, args.out, p.base.seed, p.base.device, p.base.dtype, args.round)
    if res:  # empty on torchrun ranks other than 0
        print(describe(args.round, res))


if __name__ == "__main__":
    raise SystemExit(run("evaluate", main, fast_exit=True))
