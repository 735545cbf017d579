"""Supervised fine-tuning of the base model on one round's dataset, with TRL's ``SFTTrainer``.

Each round trains from the *base* model (as the paper does), so rounds differ only by their data. Samples go to TRL
in its conversational prompt/completion form: TRL applies the chat template and masks the prompt, so the loss falls
on the response tokens only, the same tokens the complexity signal scores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from middo.config import TrainConfig
from middo.dataio.atomic import atomic_dir, atomic_write_text
from middo.device import resolve_device, resolve_dtype
from middo.errors import MiddoError
from middo.modeling import load_tokenizer
from middo.optional import require
from middo.provenance import device_name, environment
from middo.records import Record


def to_prompt_completion(records: Sequence[Record]) -> list[dict]:
    """TRL's conversational prompt/completion rows (``completion_only_loss`` masks the prompt)."""
    return [
        {"prompt": r.messages(with_response=False), "completion": [{"role": "assistant", "content": r.output}]}
        for r in records
    ]


def check_gpu_paths(cfg: TrainConfig) -> None:
    """Fail before loading anything when an option needs a package or a GPU that is not here."""
    if cfg.liger:
        require("liger_kernel", needs_cuda=True)
    if cfg.attn_implementation == "flash_attention_2":
        require("flash_attn", needs_cuda=True)
    if cfg.deepspeed:
        require("deepspeed")
        if not Path(cfg.deepspeed).is_file():
            raise MiddoError(f"train.deepspeed: config file {cfg.deepspeed} not found")
    if cfg.lora.enabled:
        require("peft")


def check_trainable(trainer, n_records: int, where: str | Path, cfg: TrainConfig) -> None:
    """Refuse to start when truncation left nothing to learn from: the trainer would crash on an empty dataset, or
    (packed) train on batches with no scored token and log a NaN loss as if all were well.

    Raises:
        MiddoError: naming the data and ``train.max_length``.
    """
    dataset = trainer.train_dataset
    scored = len(dataset) > 0
    if scored and cfg.packing:  # packing skips TRL's filter of fully masked samples; look at the labels
        scored = any(any(label != -100 for label in row) for row in dataset["labels"])
    if not scored:
        raise MiddoError(
            f"{where}: none of the {n_records} samples has a response token left after truncation to "
            f"train.max_length={cfg.max_length} tokens (the chat-formatted prompts fill it); raise train.max_length "
            "or shorten the prompts"
        )


def _precision(args) -> str:
    """The dtype training computes in, from the trainer's arguments (mixed precision flags, else float32)."""
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"


def build_trainer(
    records: Sequence[Record],
    base_model: str | Path,
    output_dir: str | Path,
    cfg: TrainConfig,
    seed: int,
    device: str,
    dtype: str,
    trust_remote_code: bool,
):
    """An ``SFTTrainer`` ready to ``train()``; separate from :func:`train_sft` so tests can inspect batches.

    Building it tokenizes the records and truncates them to ``cfg.max_length`` (TRL drops those left with no
    response token), so ``len(trainer.train_dataset)`` is what training will really see.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    check_gpu_paths(cfg)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(base_model, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        base_model,
        dtype=torch.float32 if dt == torch.float16 else dt,
        local_files_only=True,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    peft_config = None
    if cfg.lora.enabled:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=float(cfg.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        packing=cfg.packing,
        completion_only_loss=True,
        use_liger_kernel=cfg.liger,
        deepspeed=cfg.deepspeed or None,
        bf16=dt == torch.bfloat16,
        fp16=dt == torch.float16,
        use_cpu=dev.type == "cpu",
        seed=seed,
        data_seed=seed,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
        # explicit: TRL's SFTConfig turns checkpointing ON by default (transformers 5 name; the old one warns)
        activation_checkpointing=cfg.gradient_checkpointing,
    )
    dataset = Dataset.from_list(to_prompt_completion(records))
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )


def train_sft(
    records: Sequence[Record],
    base_model: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    seed: int,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    metrics_path: str | Path | None = None,
    data_path: str | Path | None = None,
) -> dict:
    """Fine-tune and write ``out_dir`` (safetensors, tokenizer, ``train_metrics.json``) atomically.

    The checkpoint folder holds only what is the same on every identical run (weights, losses, counts), so two
    clean ``dvc repro`` runs give the same hash; wall time and throughput go to ``metrics_path`` (a DVC metric),
    as ``{"train": scalars, "env": versions, device and dtype used}``.

    Args:
        data_path: the file ``records`` came from; only named in errors.

    Raises:
        MiddoError: no records, or none with a response token left after truncation to ``train.max_length``
            (checked before training starts; nothing is written), or an option needs what is not installed.
    """
    where = data_path or "train"  # the stage passes the file; a caller with records in memory gets the stage name
    if not records:
        raise MiddoError(f"{where}: the dataset is empty (0 records); nothing to train on")
    with atomic_dir(out_dir) as target:
        trainer = build_trainer(
            records, base_model, target.parent / "trainer", cfg, seed, device, dtype, trust_remote_code
        )
        check_trainable(trainer, len(records), where, cfg)
        env = environment(device=device_name(trainer.args.device), dtype=_precision(trainer.args))
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        model = trainer.model
        if cfg.lora.enabled:
            model = model.merge_and_unload()
        model.save_pretrained(target)
        trainer.processing_class.save_pretrained(target)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        # tokens actually seen (TRL logs a running count); max_steps can stop before the epoch ends
        seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
        n_tokens = int(seen[-1]) if seen else int(sum(len(x) for x in trainer.train_dataset["input_ids"]) * cfg.epochs)
        metrics = {
            "samples": len(records),
            # TRL drops samples whose response was cut off entirely by max_length; count them, never hide them
            "dropped_fully_truncated": len(records) - len(trainer.train_dataset),
            "steps": trainer.state.global_step,
            "train_loss": result.training_loss,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "seconds": round(seconds, 2),
            "tokens_seen": n_tokens,
            "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
            "loss_history": losses,
        }
        timing = ("seconds", "tokens_per_second")
        kept = {k: v for k, v in metrics.items() if k not in timing}
        atomic_write_text(target / "train_metrics.json", json.dumps(kept, indent=2) + "\n")
    if metrics_path is not None:
        scalars = {k: v for k, v in metrics.items() if k != "loss_history"}
        atomic_write_text(metrics_path, json.dumps({"train": scalars, "env": env}, indent=2) + "\n")
    return metrics
