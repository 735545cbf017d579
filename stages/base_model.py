"""Stage ``base_model``: materialise ``model.base`` as a plain HF folder (``dvc repro base_model``)."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["base-model", *sys.argv[1:]]))
