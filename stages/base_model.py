"""Stage ``base_model``: materialise ``model.base`` as a plain HF folder. Run: ``dvc repro base_model``."""

from middo.base_model import materialise
from middo.config import load_params
from middo.stage import parser, run


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="folder for the HF model")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    materialise(
        spec=p.model.base,
        out=args.out,
        allow_download=p.model.allow_download,
        chat_template=p.model.chat_template,
        trust_remote_code=p.model.trust_remote_code,
    )
    print(f"base model ready in {args.out}")


if __name__ == "__main__":
    raise SystemExit(run("base_model", main, fast_exit=True))
