"""Stage `diagnose@R`: see dvc.yaml; run with `dvc repro diagnose`."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["diagnose", *sys.argv[1:]]))
