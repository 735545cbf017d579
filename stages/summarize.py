"""Stage ``summarize``: accuracy with 95% intervals, noise verdicts, one page per round. Run: ``dvc repro summarize``.

Rounds, and the pairs judged for noise (round R against the round it refines), come from params ``rounds``.
"""

from middo.config import load_params
from middo.round_report import write_round_reports
from middo.stage import parser, run
from middo.summarize import render_noise, summarize


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--metrics", "--out", "--plots", "--reports"):
        ap.add_argument(flag, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    s = summarize(
        metrics_dir=args.metrics,
        rounds=p.rounds,
        out=args.out,
        plots_dir=args.plots,
        resamples=p.eval.bootstrap,
        seed=p.base.seed,
    )
    pages = write_round_reports(args.metrics, p.rounds, s["noise"], args.reports)
    for row in s["rounds"]:
        print(f"round {row['round']}: average {row['average']}, size {row['dataset_size']}, flagged {row['flagged']}")
    print(render_noise(s["noise"]), end="")
    print(f"round reports: {', '.join(str(x) for x in pages)}")


if __name__ == "__main__":
    raise SystemExit(run("summarize", main, fast_exit=True))
