"""``python -m middo`` runs the CLI (tools around the pipeline; the steps are the ``stages/*.py`` scripts)."""

from middo.cli import main_entry

main_entry()
