"""Stage ``diagnose@R``: complexity, diversity and quality of every sample; flags. Run: ``dvc repro diagnose``."""

from middo.config import load_params
from middo.diagnose.run import diagnose_dataset
from middo.stage import parser, relaunched_under_torchrun, run


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--data", "--base", "--current", "--out", "--summary"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--round", type=int, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    if relaunched_under_torchrun(p.base.processes, p.base.device):
        return
    s = diagnose_dataset(
        data_path=args.data,
        base_model=args.base,
        current_model=args.current,
        out_dir=args.out,
        summary_path=args.summary,
        cfg=p.diagnose,
        max_length=p.train.max_length,  # one truncation rule: loss is scored on exactly the tokens trained on
        device=p.base.device,
        dtype=p.base.dtype,
        trust_remote_code=p.model.trust_remote_code,
    )
    if s:  # empty on torchrun ranks other than 0, which write nothing
        print(f"round {args.round}: flagged {s['flagged']} of {s['n']}; seconds {s['seconds']}")


if __name__ == "__main__":
    raise SystemExit(run("diagnose", main, fast_exit=True))
