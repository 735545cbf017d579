"""DeepSpeed ZeRO really steps here, on CPU (its CPU accelerator, gloo), two processes, through the train stage.

Every ZeRO stage runs on CPU: 1 and 2 (a derived stage-1 config, and the shipped zero2.json) and 3 (zero3.json,
whose 16-bit gather on save is what makes a loadable checkpoint), plus ZeRO-3 with LoRA merged after training.
The shipped configs also train in one process started by plain ``python`` (no launcher, no mpi4py).
"""

import json
import os

import pytest
import torch
from test_train import ROOT, _stage_params, run_train_stage
from tiny_models import tiny_model

CASES = {
    "zero1": ("zero2.json", {"stage": 1}, {}),
    "zero2": ("zero2.json", {}, {}),
    "zero3": ("zero3.json", {}, {}),
    "zero3-lora-merged": ("zero3.json", {}, {"lora": {"enabled": True, "merge": True}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_zero_two_processes_on_cpu(base_model_dir, tmp_path, case):
    pytest.importorskip("deepspeed", reason="install with: pip install --no-build-isolation deepspeed (make setup)")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shipped, zero, train = CASES[case]
    config = json.loads((ROOT / "configs" / "deepspeed" / shipped).read_text())
    config["zero_optimization"].update(zero)
    ds = tmp_path / f"{case}.json"
    ds.write_text(json.dumps(config))
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    params = _stage_params(tmp_path, 2, batch_size=2, deepspeed=str(ds), **train)
    out = run_train_stage(tmp_path, case, model, params, env={"DS_ACCELERATOR": "cpu"})

    final = out / "models" / "round_1"
    metrics = json.loads((final / "train_metrics.json").read_text())
    assert (metrics["steps"], metrics["processes"], metrics["effective_batch_size"]) == (4, 2, 4)
    assert all(loss > 0 for loss in metrics["loss_history"])
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert "training_args.bin" not in {p.name for p in final.iterdir()}
    before, after = load_file(model / "model.safetensors"), load_file(final / "model.safetensors")
    assert {k: v.shape for k, v in after.items() if k in before} == {k: v.shape for k, v in before.items()}
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k])]
    if train:  # LoRA: the embeddings and norms stay, every adapted projection moved
        assert not [k for k in unchanged if k.endswith("proj.weight")], unchanged
    else:  # full fine-tune: every weight trained (and ZeRO-3 gathered whole tensors, not its empty stubs)
        assert not unchanged, unchanged

    reloaded = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(final, local_files_only=True)
    ids = tok("What is 2 times 3?", return_tensors="pt")
    assert reloaded.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("shipped", ["zero2.json", "zero3.json"])
def test_one_process_without_launcher_or_mpi4py(base_model_dir, tmp_path, shipped):
    """base.processes: 1 with a DeepSpeed config: no torchrun, so nothing names the ranks; DeepSpeed must not fall
    back to MPI discovery (mpi4py is made unimportable here, as on most machines) but train as rank 0 of 1."""
    pytest.importorskip("deepspeed", reason="install with: pip install --no-build-isolation deepspeed (make setup)")
    from safetensors.torch import load_file

    blocker = tmp_path / "no_mpi4py"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['mpi4py'] = None  # import fails: not installed\n"
    )
    env = {"DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    params = _stage_params(
        tmp_path, 1, batch_size=2, grad_accum=2, deepspeed=str(ROOT / "configs/deepspeed" / shipped)
    )
    out = run_train_stage(tmp_path, "one", model, params, env=env)

    final = out / "models" / "round_1"
    train = json.loads((out / "metrics" / "round_1" / "train.json").read_text())["train"]
    assert (train["steps"], train["processes"], train["effective_batch_size"]) == (4, 1, 4)
    assert "train: global batch 4 = 2 per device x 2 accumulation x 1 process\n" in (out / "stdout.txt").read_text()
    before, after = load_file(model / "model.safetensors"), load_file(final / "model.safetensors")
    assert not [k for k, v in before.items() if torch.equal(v, after[k])]  # every weight trained, and was saved
