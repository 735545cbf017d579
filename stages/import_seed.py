"""Stage ``import_seed``: read ``data.seed_path`` into round 0 with a rejects file (``dvc repro import_seed``)."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["import", *sys.argv[1:]]))
