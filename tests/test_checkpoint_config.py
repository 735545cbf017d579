"""Every config.json the project writes reads the same RoPE in transformers 4 (OpenCompass, LLaMA-Factory, older
vLLM) as in transformers 5, for SmolLM2-, Llama-3.1- and Mistral-v0.3-shaped models."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig

from middo.base_model import materialise
from middo.checkpoint_config import legacy_rope_keys, make_config_portable, misread_rope_keys
from middo.config import LoraConfig, TrainConfig
from middo.records import Record
from middo.train import train_sft

TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# name -> (config as the model's hub config.json sets it, what a transformers 4 reader must see: rope_theta, scaling)
SHAPES = {
    "smollm2": (lambda: LlamaConfig(**TINY, rope_theta=1e5, max_position_embeddings=8192), (1e5, None)),
    "llama3.1": (
        lambda: LlamaConfig(**TINY, rope_theta=5e5, rope_scaling=dict(LLAMA3_SCALING), max_position_embeddings=131072),
        (5e5, LLAMA3_SCALING),
    ),
    "mistral-v0.3": (lambda: MistralConfig(**TINY, rope_theta=1e6, max_position_embeddings=32768), (1e6, None)),
}


def read_like_transformers_4(config: dict) -> tuple[float, dict | None]:
    """The RoPE base and scaling transformers 4.57's LlamaConfig / MistralConfig take from a config.json: the
    ``rope_theta`` argument (default 10000.0) and ``rope_scaling`` (default None; an old ``type`` key is copied to
    ``rope_type``). ``rope_parameters`` is no argument of theirs: it ends up as an attribute nothing reads."""
    scaling = config.get("rope_scaling")
    if scaling is not None and "type" in scaling:
        scaling = {**scaling, "rope_type": scaling["type"]}
    return config.get("rope_theta", 10000.0), scaling


def _model_folder(config, tokenizer_from, dst):
    """A tiny random model of ``config``'s architecture saved by transformers 5, with the default tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_converted_base_model_reads_the_same_rope_in_transformers_4(shape, base_model_dir, tmp_path):
    make, want = SHAPES[shape]
    src = _model_folder(make(), base_model_dir, tmp_path / "hub")
    saved = json.loads((src / "config.json").read_text())
    assert read_like_transformers_4(saved) == (10000.0, None)  # what transformers 5 alone leaves: the bug
    out = materialise(str(src), tmp_path / "models" / "base", False, "auto", False)

    written = json.loads((out / "config.json").read_text())
    assert read_like_transformers_4(written) == want
    if want[1] is not None:  # transformers 4's _validate_llama3_parameters needs exactly these keys
        assert set(written["rope_scaling"]) == set(LLAMA3_SCALING)
    assert written["rope_parameters"] == saved["rope_parameters"]  # transformers 5's own key is kept as it was
    assert misread_rope_keys(written) == []
    # transformers 5 reads both keys and gets what it saved
    assert AutoConfig.from_pretrained(out, local_files_only=True).rope_parameters == saved["rope_parameters"]
    before = (out / "config.json").read_bytes()
    assert make_config_portable(out) is False and (out / "config.json").read_bytes() == before  # stable for DVC


@pytest.mark.slow  # two short trainings of a tiny model, about 15 s on CPU
@pytest.mark.parametrize("merge", [False, True], ids=["full", "lora-merged"])
def test_trained_checkpoints_read_the_same_rope_in_transformers_4(merge, base_model_dir, tmp_path):
    make, want = SHAPES["llama3.1"]
    base = _model_folder(make(), base_model_dir, tmp_path / "base")
    cfg = TrainConfig(max_steps=1, batch_size=2, max_length=64, warmup_ratio=0.0)
    if merge:
        cfg = replace(cfg, lora=LoraConfig(enabled=True, merge=True))
    records = [Record(id=f"r{i}", instruction=f"What is {i} + 1?", output=f"{i + 1}.") for i in range(2)]
    out = tmp_path / "round_1"
    train_sft(records, base, out, cfg, seed=0, device="cpu", dtype="float32", trust_remote_code=False)
    written = json.loads((out / "config.json").read_text())
    assert read_like_transformers_4(written) == want
    assert misread_rope_keys(written) == []


def test_misread_keys_are_named():
    config = {"rope_parameters": {"rope_theta": 5e5, **LLAMA3_SCALING}, "max_position_embeddings": 131072}
    problems = misread_rope_keys(config)
    assert [p.split(":")[0] for p in problems] == ["rope_theta", "rope_scaling"]
    assert "transformers 4 reads 10000.0 (absent, so its default), rope_parameters say 500000.0" in problems[0]
    # an older writer's spelling ("type") is what transformers 4 reads too
    old = {"type": "llama3", **{k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"}}
    assert misread_rope_keys({**config, "rope_theta": 5e5, "rope_scaling": old}) == []
    assert misread_rope_keys({**config, **legacy_rope_keys(config)}) == []
    wrong = misread_rope_keys({**config, "rope_theta": 1e4, "rope_scaling": old})
    assert wrong == ["rope_theta: transformers 4 reads 10000.0, rope_parameters say 500000.0"]
    assert misread_rope_keys({"rope_theta": 1e6}) == []  # saved by transformers 4: nothing it would not read
    per_layer = {"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}}
    assert misread_rope_keys(per_layer)[0].startswith("rope_parameters: ")
    partial = {"rope_parameters": {"rope_theta": 1e4, "rope_type": "default", "partial_rotary_factor": 0.5}}
    assert [p.split(":")[0] for p in misread_rope_keys(partial)] == ["partial_rotary_factor"]


def test_an_adapter_folder_is_left_alone(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert make_config_portable(tmp_path) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]
