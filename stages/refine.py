"""Stage `refine@R`: see dvc.yaml; run with `dvc repro refine`."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["refine", *sys.argv[1:]]))
