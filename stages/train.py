"""Stage ``train@R`` (``train_seed`` for round 0): SFT the base model on a round's data. Run: ``dvc repro train``."""

from middo.config import load_params
from middo.dataio.writers import read_records
from middo.stage import parser, relaunched_under_torchrun, run
from middo.train import train_sft


def main(argv=None):
    ap = parser(__doc__)
    for flag in ("--round", "--data", "--base", "--out", "--metrics", "--live"):  # --live: DVCLive's folder
        ap.add_argument(flag, required=True)
    args = ap.parse_args(argv)
    p = load_params(args.params)
    if relaunched_under_torchrun(p.base.processes, p.base.device):
        return
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
        live_dir=args.live,
    )
    if m:  # empty on torchrun ranks other than 0
        print("round {}: {steps} steps, loss {first_loss} -> {last_loss}, {seconds:.0f} s".format(args.round, **m))


if __name__ == "__main__":
    raise SystemExit(run("train", main, fast_exit=True))
