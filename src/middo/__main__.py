"""``python -m middo`` (and ``torchrun -m middo diagnose ...``) runs the CLI."""

from middo.cli import main_entry

main_entry()
