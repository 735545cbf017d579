"""Stage ``train@R`` (``train_seed`` for round 0): SFT the base model on a round's data. Run: ``dvc repro train``."""

from middo.config import load_params
from middo.dataio.writers import read_records
from middo.stage import parser, run
from middo.train import train_sft


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--data", "--base", "--out", "--metrics"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--round", type=int, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    m = train_sft(
        records=read_records(args.data),
        data_path=args.data,
        base_model=args.base,
        out_dir=args.out,
        cfg=p.train,
        seed=p.base.seed,
        device=p.base.device,
        dtype=p.base.dtype,
        trust_remote_code=p.model.trust_remote_code,
        metrics_path=args.metrics,
    )
    print(f"round {args.round}: {m['steps']} steps, loss {m['first_loss']} -> {m['last_loss']}, {m['seconds']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(run("train", main))
