"""The DVC pipeline definition stays consistent with params.yaml and the scripts it runs."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _stages():
    """Stage name -> definition, with ``foreach`` stages unwrapped to their ``do`` body."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_stage_param_exists_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            keys = key if isinstance(key, str) else next(iter(key.values()))
            for k in [keys] if isinstance(keys, str) else keys:
                assert _has_key(params, k), f"stage {name}: param {k} missing from params.yaml"


def test_every_stage_script_is_a_dep():
    for name, stage in _stages().items():
        cmd = stage["cmd"]
        script = re.search(r"python (stages/\S+\.py)", cmd)
        assert script, f"stage {name}: cmd should run a stages/ script: {cmd}"
        assert script.group(1) in stage["deps"], f"stage {name}: {script.group(1)} not in deps"
        assert (ROOT / script.group(1)).is_file()


def test_round_stages_do_not_depend_on_the_whole_rounds_map():
    # listing `rounds` would re-run every round whenever one is added
    for name, stage in _stages().items():
        if name != "summarize":  # the one stage that must see every round
            assert "rounds" not in stage.get("params", []), name


def test_stage_scripts_are_thin():
    for script in (ROOT / "stages").glob("*.py"):
        lines = [ln for ln in script.read_text().splitlines() if ln.strip()]
        assert len(lines) <= 30, f"{script.name} has {len(lines)} lines; logic belongs in src/middo"
        assert lines[0].startswith('"""'), f"{script.name} needs a docstring with its dvc repro line"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "middo.cli", "--help"], capture_output=True, text=True, check=True)
    for sub in ("base-model", "import", "check-params"):
        assert sub in out.stdout


def test_cli_check_params_reports_key_path(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base:\n  seed: -3\n")
    out = subprocess.run(
        [sys.executable, "-m", "middo.cli", "check-params", "--params", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "base.seed: must be >= 0, got -3" in out.stderr
    assert "Traceback" not in out.stderr
