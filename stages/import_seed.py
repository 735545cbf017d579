"""Stage ``import_seed``: ``data.seed_path`` into round 0, rejects with reasons. Run: ``dvc repro import_seed``."""

from middo.config import load_params
from middo.ingest import import_dataset
from middo.stage import parser, run


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="folder for train.jsonl, rejects.jsonl, dataset_info.json")
    ap.add_argument("--metrics", required=True, help="import counts (a DVC metric)")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    d = p.data
    counts = import_dataset(
        source=d.seed_path,
        out_dir=args.out,
        metrics_path=args.metrics,
        fmt=d.format,
        split=d.split,
        limit=d.limit,
        entry=d.entry,
    )
    print({k: v for k, v in counts.items() if k != "env"})


if __name__ == "__main__":
    raise SystemExit(run("import_seed", main, fast_exit=True))
