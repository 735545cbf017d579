"""Stage ``summarize``: accuracy, size and flags per round (round list from params). Run: ``dvc repro summarize``."""

from middo.config import load_params
from middo.stage import parser, run
from middo.summarize import summarize


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--metrics", "--out", "--plots"):
        ap.add_argument(flag, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    s = summarize(metrics_dir=args.metrics, rounds=[0, *map(int, p.rounds)], out=args.out, plots_dir=args.plots)
    for row in s["rounds"]:
        print(f"round {row['round']}: average {row['average']}, size {row['dataset_size']}, flagged {row['flagged']}")


if __name__ == "__main__":
    raise SystemExit(run("summarize", main))
