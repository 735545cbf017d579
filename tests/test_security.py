"""Security defaults: checkpoint code never runs unless asked, and nothing exchanges data through pickle."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from middo.config import load_params

ROOT = Path(__file__).resolve().parents[1]

EVIL = """
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path(MARKER).write_text("checkpoint code was executed")


class EvilConfig(LlamaConfig):
    model_type = "evil-llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def checkpoint_with_code(base_model_dir, tmp_path):
    """The test model, plus an ``auto_map`` pointing at code that leaves a marker file when imported."""
    folder = tmp_path / "evil"
    shutil.copytree(base_model_dir, folder)
    (folder / "modeling_evil.py").write_text(f"MARKER = {str(tmp_path / 'CODE_RAN')!r}\n" + EVIL)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_trust_remote_code_is_off_by_default():
    assert load_params(ROOT / "params.yaml").model.trust_remote_code is False


@pytest.mark.slow
def test_checkpoint_code_runs_only_with_trust_remote_code(checkpoint_with_code, tmp_path):
    from middo.modeling import load_model

    marker = tmp_path / "CODE_RAN"
    try:
        load_model(checkpoint_with_code, "cpu", "float32")
    except Exception:  # noqa: BLE001 - refusing to load is as good as loading without the code
        pass
    assert not marker.exists()

    # the opt-in really does run it, so the check above can fail
    load_model(checkpoint_with_code, "cpu", "float32", trust_remote_code=True)
    assert marker.exists()


# deserialising pickle runs arbitrary code; data, scores, caches and checkpoints use JSON, Parquet and safetensors
PICKLE_USES = re.compile(
    r"import pickle|from pickle|import dill|cloudpickle|read_pickle|to_pickle|allow_pickle\s*=\s*True"
    r"|torch\.load\((?![^)]*weights_only\s*=\s*True)|\.save_pretrained\([^)]*safe_serialization\s*=\s*False"
)


def test_no_pickle_in_the_package():
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PICKLE_USES.search(line)
    ]
    assert hits == []


def test_pickle_pattern_catches_what_it_should():
    assert PICKLE_USES.search("x = torch.load(path)")
    assert PICKLE_USES.search("import pickle")
    assert not PICKLE_USES.search("x = torch.load(path, weights_only=True)")
