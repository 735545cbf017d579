import json
from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_model

from middo.config import TrainConfig
from middo.errors import MiddoError
from middo.provenance import PACKAGES
from middo.records import Record
from middo.train import build_trainer, check_gpu_paths, train_sft

RECORDS = [
    Record(id=f"r{i}", instruction=q, output=a)
    for i, (q, a) in enumerate(
        [
            ("What colour is the sky on a clear day?", "Blue."),
            ("What is 3 + 4?", "3 + 4 = 7."),
            ("Name a mammal that can fly.", "The bat."),
            ("What is the opposite of hot?", "Cold."),
        ]
    )
]
TINY = TrainConfig(
    max_steps=6, learning_rate=5e-4, warmup_ratio=0.0, lr_scheduler="constant", batch_size=4, max_length=128
)


@pytest.mark.slow
def test_response_only_masking_token_by_token(base_model_dir, tmp_path):
    trainer = build_trainer(
        RECORDS, base_model_dir, tmp_path / "t", TINY, seed=42, device="cpu", dtype="float32", trust_remote_code=False
    )
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    for row in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        scored = labels != -100
        assert torch.equal(labels[scored], ids[scored])  # labels are the tokens themselves where scored
        text = tok.decode(ids[scored])
        rec = next(r for r in RECORDS if r.output in text)
        assert text.startswith(rec.output)  # first scored token starts the response...
        assert rec.instruction not in text  # ...and nothing of the prompt is scored
        first = int(scored.nonzero()[0])
        assert tok.decode(ids[:first]).rstrip().endswith("assistant")
    # params say no gradient checkpointing, so none (TRL's own default is on: activations recomputed unasked)
    assert not trainer.args.activation_checkpointing
    assert not trainer.model.is_activation_checkpointing


@pytest.mark.slow
def test_training_reduces_loss_and_checkpoint_generates(base_model_dir, tmp_path):
    out = tmp_path / "models" / "round_0"
    before = {
        k: v.clone()
        for k, v in __import__("transformers")
        .AutoModelForCausalLM.from_pretrained(base_model_dir)
        .state_dict()
        .items()
    }
    metrics_path = tmp_path / "metrics" / "round_0" / "train.json"
    metrics = train_sft(
        RECORDS,
        base_model_dir,
        out,
        TINY,
        seed=1,
        device="cpu",
        dtype="float32",
        trust_remote_code=False,
        metrics_path=metrics_path,
    )
    assert metrics["steps"] == 6
    assert metrics["last_loss"] < metrics["first_loss"]
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["loss_history"] == metrics["loss_history"]
    assert "seconds" not in saved  # the checkpoint folder must hash the same on every identical run
    saved_metrics = json.loads(metrics_path.read_text())
    timing = saved_metrics["train"]
    assert timing["seconds"] > 0 and timing["steps"] == 6
    env = saved_metrics["env"]
    assert set(env) == {"python", *PACKAGES, "device", "dtype"}
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp dir cleaned up

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    after = model.state_dict()
    unchanged = [k for k, v in before.items() if k in after and torch.equal(v, after[k])]
    assert not unchanged, f"parameters that did not train: {unchanged[:5]}"
    ids = tok.apply_chat_template(
        RECORDS[1].messages(False), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_missing_gpu_packages_give_clear_message():
    with pytest.raises(MiddoError, match="liger-kernel|CUDA"):
        check_gpu_paths(TrainConfig(liger=True))
    with pytest.raises(MiddoError, match="flash-attn|CUDA"):
        check_gpu_paths(TrainConfig(attn_implementation="flash_attention_2"))
    with pytest.raises(MiddoError, match="deepspeed"):
        check_gpu_paths(TrainConfig(deepspeed="configs/deepspeed/nope.json"))


def test_empty_dataset_is_refused_naming_the_data(tmp_path):
    data = tmp_path / "data" / "round_2" / "train.jsonl"
    with pytest.raises(MiddoError, match=f"^{data}: the dataset is empty"):
        train_sft([], tmp_path / "no-model", tmp_path / "out", TINY, 42, "cpu", "float32", False, data_path=data)


@pytest.mark.slow
def test_nothing_left_after_truncation_is_refused_before_training(base_model_dir, tmp_path):
    """Every chat-formatted prompt is longer than 16 tokens, so no response token survives truncation."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    data = tmp_path / "data" / "round_1" / "train.jsonl"
    out = tmp_path / "models" / "round_1"
    for packing in (False, True):
        cfg = replace(TINY, max_length=16, packing=packing)
        with pytest.raises(MiddoError) as err:
            train_sft(RECORDS, model, out, cfg, 42, "cpu", "float32", False, data_path=data)
        msg = str(err.value)
        assert msg.startswith(f"{data}: none of the 4 samples has a response token left"), msg
        assert "train.max_length=16" in msg
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no model folder, no temp folder left
