"""GPU paths: they run where CUDA exists (and the package is installed) and skip cleanly everywhere else."""

import pytest

from middo.config import TrainConfig
from middo.records import Record

RECORDS = [Record(id=f"r{i}", instruction=f"What is {i} + 2?", output=f"{i + 2}.") for i in range(8)]
TINY = dict(max_steps=2, batch_size=4, max_length=64, warmup_ratio=0.0, lr_scheduler="constant", learning_rate=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    "option,package",
    [({"liger": True}, "liger_kernel"), ({"attn_implementation": "flash_attention_2"}, "flash_attn")],
)
def test_training_with_gpu_kernels(base_model_dir, tmp_path, option, package):
    pytest.importorskip(package)
    from middo.train import train_sft

    m = train_sft(
        RECORDS,
        base_model_dir,
        tmp_path / "m",
        TrainConfig(**TINY, **option),
        seed=42,
        device="cuda",
        dtype="bfloat16",
        trust_remote_code=False,
    )
    assert m["steps"] == 2 and m["last_loss"] > 0


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_teacher_generates(base_model_dir):
    pytest.importorskip("vllm")
    from middo.teachers import Sampling, make_teacher

    teacher = make_teacher("vllm", model_path=str(base_model_dir))
    out = teacher.complete(["Name a colour."], Sampling(max_new_tokens=8))
    assert out[0] and out[0].strip()


@pytest.mark.gpu
@pytest.mark.slow
def test_diagnosis_runs_on_cuda(base_model_dir):
    import numpy as np

    from middo.diagnose.complexity import response_losses, tokenize_for_loss
    from middo.modeling import load_model

    cpu = load_model(base_model_dir, "cpu", "float32")
    gpu = load_model(base_model_dir, "cuda", "float32")
    enc = tokenize_for_loss(cpu.tokenizer, RECORDS, 256)
    a = response_losses(cpu.model, enc, cpu.tokenizer.pad_token_id, cpu.device)
    b = response_losses(gpu.model, enc, gpu.tokenizer.pad_token_id, gpu.device)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
