"""The paper presets, applied as a user applies them, against the reference's own numbers.

Every expected value is a literal copied from the reference (GitHub ``Word2VecT/Middo`` at 4e24d6f, the commit
docs/fidelity.md follows; HEAD d3a903f has the same values), with the file and line it comes from: a preset that
drifts from the reference fails here, whatever the preset itself says.
"""

import json
from pathlib import Path

import pytest

from middo.config import load_params
from middo.presets import apply_preset

ROOT = Path(__file__).resolve().parents[1]

# scripts/train_llama.yaml / scripts/train_mistral.yaml (same line numbers in both)
TRAIN = {
    "paper.yaml": {
        "learning_rate": 2.0e-5,  # train_llama.yaml:32
        "liger": True,  # train_llama.yaml:33 use_liger_kernel: true
    },
    "paper-mistral.yaml": {
        "learning_rate": 1.0e-5,  # train_mistral.yaml:32
        "liger": False,  # train_mistral.yaml:33 use_liger_kernel: false
    },
}
COMMON_TRAIN = {
    "epochs": 1.0,  # :34 num_train_epochs: 1.0
    "lr_scheduler": "cosine",  # :35 lr_scheduler_type: cosine
    "warmup_ratio": 0.03,  # :36 warmup_ratio: 0.03
    "batch_size": 4,  # :30 per_device_train_batch_size: 4
    "grad_accum": 8,  # :31 gradient_accumulation_steps: 8
    "max_length": 4096,  # :16 cutoff_len: 4096
    "attn_implementation": "flash_attention_2",  # :11 flash_attn: fa2
}
ZERO_STAGE = 2  # :9 deepspeed: examples/deepspeed/ds_z2_config.json
# complexity_synthetic.py:46-47 (and the other *_synthetic.py): DataDreamer ProcessWithPrompt args
TEACHER = {"temperature": 1.0, "top_p": 1.0}
# quality_infer.py: vllm_infer's defaults, used as quality_optimization.sh calls it (no sampling flags)
JUDGE = {
    "mode": "generate",  # quality_infer.py:131 LLM(...).generate, the first number parsed (quality_filter.py)
    "engine": "vllm",  # quality_infer.py:29 from vllm import LLM, SamplingParams
    "temperature": 0.1,  # quality_infer.py:43
    "top_p": 0.7,  # quality_infer.py:44
    "top_k": 50,  # quality_infer.py:45
    "max_new_tokens": 1024,  # quality_infer.py:46
    "cutoff": 4096,  # quality_infer.py:40 cutoff_len
    "max_chars": 0,  # the reference clips no characters
}


@pytest.fixture(params=sorted(TRAIN))
def applied(request, tmp_path):
    """``middo params apply presets/<name>`` on a copy of params.yaml, then loaded as ``middo check-params`` does."""
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    apply_preset(target, ROOT / "presets" / request.param)
    return request.param, load_params(target)


def test_the_paper_presets_train_as_the_reference(applied):
    name, p = applied
    for key, value in {**COMMON_TRAIN, **TRAIN[name]}.items():
        assert getattr(p.train, key) == value, f"{name}: train.{key}"
    assert p.base.dtype == "bfloat16"  # :37 bf16: true
    assert not p.train.lora.enabled  # :8 finetuning_type: full
    assert p.model.chat_template == "default"  # :15 template: default
    assert p.diagnose.diversity.max_length is None  # diversity_filter.py:24 tokenizer(sentence): the whole prompt
    assert p.diagnose.complexity.m == 1.0  # complexity_filter.py:21 mean + 1 * std (its --m is parsed, unused)
    zero = json.loads((ROOT / p.train.deepspeed).read_text())
    assert zero["zero_optimization"]["stage"] == ZERO_STAGE, f"{name}: {p.train.deepspeed}"


def test_the_paper_presets_state_and_record_the_global_batch(applied):
    """per-device 4 x accumulation 8 x one process per visible GPU: the reference's LLaMA-Factory launch uses every
    visible GPU, so the presets do too, and their comment says what the global batch comes to."""
    name, p = applied
    assert p.base.processes == "auto"
    text = (ROOT / "presets" / name).read_text()
    assert "global batch = per-device 4 x accumulation 8 x processes" in text


def test_the_paper_presets_judge_and_sample_the_teacher_as_the_reference(applied):
    name, p = applied
    for key, value in JUDGE.items():
        assert getattr(p.diagnose.quality, key) == value, f"{name}: diagnose.quality.{key}"
    for key, value in TEACHER.items():
        assert getattr(p.refine.teacher, key) == value, f"{name}: refine.teacher.{key}"
    assert p.refine.merge == "reference"
