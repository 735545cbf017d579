"""Loading models: full checkpoints, and LoRA adapter folders (``train.lora.merge: false``) merged into their base."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from middo.config import LoraConfig, TrainConfig
from middo.errors import MiddoError
from middo.modeling import adapter_base, load_model, record_adapter_base
from middo.records import Record
from middo.train import train_sft

RECORDS = [Record(id=f"r{i}", instruction=f"What is {i} + 3?", output=f"{i} + 3 = {i + 3}.") for i in range(4)]
LORA = TrainConfig(
    max_steps=2,
    batch_size=4,
    max_length=64,
    learning_rate=5e-3,
    warmup_ratio=0.0,
    lr_scheduler="constant",
    lora=LoraConfig(enabled=True, merge=False),
)
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}


def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _fake_adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_adapter_base_is_none_for_a_full_model(tmp_path):
    assert adapter_base(_fake_model(tmp_path / "models" / "round_0")) is None


def test_recorded_base_is_relative_and_survives_a_move(tmp_path):
    """What a fresh clone plus ``dvc pull`` gives: the same layout under another root."""
    _fake_model(tmp_path / "a" / "models" / "base")
    adapter = _fake_adapter(tmp_path / "a" / "models" / "round_1", "/somewhere/else")
    record_adapter_base(adapter, tmp_path / "a" / "models" / "base")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base"
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert adapter_base(tmp_path / "b" / "models" / "round_1") == tmp_path / "b" / "models" / "base"


def test_record_base_relative_to_the_final_folder(tmp_path):
    """Training writes into a temp folder renamed afterwards: the path must hold from the final name."""
    _fake_model(tmp_path / "models" / "base")
    tmp = _fake_adapter(tmp_path / "models" / ".round_2.x1y2" / "out", "models/base")
    record_adapter_base(tmp, tmp_path / "models" / "base", final=tmp_path / "models" / "round_2")
    assert json.loads((tmp / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base"


def test_missing_base_names_the_file_and_the_fix(tmp_path):
    adapter = _fake_adapter(tmp_path / "models" / "round_1", "../base")
    with pytest.raises(MiddoError, match=r"adapter_config.json: base_model_name_or_path '../base'.*dvc pull"):
        adapter_base(adapter)
    with pytest.raises(MiddoError, match="dvc pull"):
        load_model(adapter, "cpu", "float32")


def test_neither_model_nor_adapter_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiddoError, match="not a model folder"):
        load_model(tmp_path / "empty", "cpu", "float32")


def _merged_by_hand(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """W + (alpha / r) * B @ A for every adapted layer, straight from the safetensors files (no peft)."""
    from safetensors.torch import load_file

    weights = load_file(base / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    for key, a in lora.items():
        if ".lora_A." in key:
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            weights[name] = weights[name] + scale * (b @ a)
    return weights


@pytest.mark.slow
def test_adapter_round_trip(base_model_dir, tmp_path):
    """merge: false leaves only the adapter and tokenizer; load_model gives base + adapter, merged."""
    from transformers import AutoModelForCausalLM

    base = tiny_model(base_model_dir, tmp_path / "models" / "base")
    out = tmp_path / "models" / "round_1"
    train_sft(RECORDS, base, out, LORA, seed=0, device="cpu", dtype="float32", trust_remote_code=False)

    files = {p.name for p in out.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "train_metrics.json", *TOKENIZER_FILES}
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (base / "model.safetensors").stat().st_size / 20  # MBs, not a model per round
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base"
    assert adapter_base(out) == base

    # a fresh clone after `dvc pull`: the same layout elsewhere; the original is gone, so nothing points back
    clone = tmp_path / "clone" / "models"
    shutil.copytree(tmp_path / "models", clone)
    shutil.rmtree(tmp_path / "models")
    lm = load_model(clone / "round_1", "cpu", "float32")
    assert type(lm.model).__name__ == "LlamaForCausalLM"  # merged: no peft wrapper left to slow generation

    ids = lm.tokenizer("What is 2 + 3? 2 + 3 = 5.", return_tensors="pt")["input_ids"]
    by_hand = AutoModelForCausalLM.from_pretrained(clone / "base", dtype=torch.float32)
    plain = by_hand(ids).logits
    by_hand.load_state_dict(_merged_by_hand(clone / "base", clone / "round_1"), strict=False)
    with torch.no_grad():
        want, got = by_hand(ids).logits, lm.model(ids).logits
    assert not torch.allclose(plain, want, atol=1e-4)  # the adapter trained, so the comparison means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_merged_lora_is_a_plain_checkpoint(base_model_dir, tmp_path):
    """merge: true (the default) writes a full model that loads without peft."""
    base = tiny_model(base_model_dir, tmp_path / "models" / "base")
    out = tmp_path / "models" / "round_1"
    cfg = replace(LORA, lora=LoraConfig(enabled=True, merge=True))
    train_sft(RECORDS, base, out, cfg, seed=0, device="cpu", dtype="float32", trust_remote_code=False)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors"} <= files and "adapter_config.json" not in files
    assert "training_args.bin" not in files  # a pickle of the trainer's arguments never goes into a checkpoint
    assert adapter_base(out) is None
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp folders cleaned up
