"""Stage `evaluate@R` (and `evaluate_seed` for round 0): see dvc.yaml; run with `dvc repro evaluate`."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
