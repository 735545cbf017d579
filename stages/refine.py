"""Stage ``refine@R``: the teacher simplifies, diversifies and improves flagged samples. Run: ``dvc repro refine``."""

from middo.config import load_params
from middo.refine.run import refine_round
from middo.stage import parser, run


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--data", "--diagnosis", "--out", "--metrics", "--summary"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--round", type=int, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    r = refine_round(
        data_path=args.data,
        diagnosis_dir=args.diagnosis,
        out_dir=args.out,
        metrics_dir=args.metrics,
        summary_path=args.summary,
        round_=args.round,
        **{k: getattr(p.refine, k) for k in ("merge", "selection", "precedence", "max_added_fraction")},
        max_failed_fraction=p.refine.max_failed_fraction,
        teacher_cfg=p.refine.teacher,
        seed=p.base.seed,
        device=p.base.device,
        dtype=p.base.dtype,
    )
    c = r["cache"]
    print(f"round {args.round}: {r['size_before']} -> {r['size_after']} (removed {r['removed']}, added {r['added']})")
    print(f"teacher cache: {c['hits']} hits, {c['misses']} misses")


if __name__ == "__main__":
    raise SystemExit(run("refine", main, fast_exit=True))
