"""Stage `train@R` (and `train_seed` for round 0): see dvc.yaml; run with `dvc repro train`."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
