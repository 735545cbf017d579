"""Stage ``summarize``: accuracy / size / flags per round from params' round list (``dvc repro summarize``)."""

import sys

from middo.cli import main

if __name__ == "__main__":
    sys.exit(main(["summarize", *sys.argv[1:]]))
