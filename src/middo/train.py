"""Supervised fine-tuning of the base model on one round's dataset, with TRL's ``SFTTrainer``.

Each round trains from the *base* model (as the paper does), so rounds differ only by their data. Samples go to TRL
already tokenized by :func:`middo.chat_template.training_rows` (chat template applied, prompt masked, too-long samples
cut by keeping the response and trimming the prompt), so the loss falls on the response tokens only, the same tokens
the complexity signal scores.

Under torchrun (``base.processes``, or ``accelerate launch``) each process takes its share of every batch (so the
effective batch is ``batch_size * grad_accum * processes``) and the checkpoint is saved through the trainer, which
gathers DeepSpeed ZeRO-3 shards on every rank and writes on rank 0 alone, into one temp folder renamed once.
Computing in bfloat16, the trained weights and AdamW's moments stay float32 unless ``train.pure_bf16`` (see
:func:`_load_dtype`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from middo.chat_template import make_tokenizer_portable, training_rows
from middo.checkpoint_config import make_config_portable
from middo.config import TrainConfig
from middo.dataio.atomic import atomic_write_text
from middo.device import resolve_device, resolve_dtype
from middo.distributed import Shard, atomic_dir_on_main, from_env, local_device, one_process_group
from middo.errors import MiddoError
from middo.modeling import load_tokenizer, merged_adapter_model, record_adapter_base
from middo.optional import require
from middo.provenance import device_name, environment, write_metrics
from middo.records import Record


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


def _load_dtype(cfg: TrainConfig, dt):
    """The dtype the weights load in, for a run that computes in ``dt``.

    AdamW on bfloat16 weights keeps bfloat16 moments and no float32 copy: with 8 bits of mantissa an update below
    about 1/256 of a weight rounds away, which at learning rates of 1e-5 is most of them. So the trained weights load
    in float32 and bf16 autocast does the compute (``bf16=True``), unless ``train.pure_bf16`` asks for bfloat16
    weights. DeepSpeed keeps its own float32 copy in the optimizer, LoRA trains adapters (peft makes them float32)
    over a frozen base, and float16 mixed precision needs float32 weights (its grad scaler refuses float16 ones).
    """
    import torch

    if dt == torch.float16:
        return torch.float32
    if dt == torch.bfloat16 and not (cfg.pure_bf16 or cfg.deepspeed or cfg.lora.enabled):
        return torch.float32
    return dt


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

    Building it tokenizes the records and cuts them to ``cfg.max_length`` (the response kept, the prompt trimmed; TRL
    would drop a sample left with no response token), so ``len(trainer.train_dataset)`` is what training will see.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from middo.response_loss import ResponseLogitsSFTTrainer

    check_gpu_paths(cfg)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(base_model, trust_remote_code)
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
    # padding-free: a batch is one row, each sample's positions restarting at 0, so no padding token is computed
    # and attention stays inside each sample (transformers builds the block mask from the position ids). The rows are
    # already cut to max_length by training_rows, which TRL asks for by max_length=None. Packing is padding-free too.
    padding_free = cfg.padding_free and not cfg.packing
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
        max_length=None if padding_free else cfg.max_length,
        packing=cfg.packing,
        padding_free=padding_free,
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
        ddp_find_unused_parameters=False,  # every weight (or adapter) takes part in the loss; skips a graph walk
        # explicit: TRL's SFTConfig turns checkpointing ON by default (transformers 5 name; the old one warns)
        activation_checkpointing=cfg.gradient_checkpointing,
    )
    if cfg.deepspeed and torch.distributed.is_initialized():
        import deepspeed  # DeepSpeed's own view of the process group: ZeRO-3 sizes its shards by it at load time

        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    # after the arguments: with a ZeRO-3 config they make from_pretrained load each rank's shard only (zero.Init)
    model = AutoModelForCausalLM.from_pretrained(
        base_model,
        dtype=_load_dtype(cfg, dt),
        local_files_only=True,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    # tokenized and cut here by the rule loss scoring uses (keep the response, trim the prompt), not TRL's keep_start
    dataset = Dataset.from_list(training_rows(tokenizer, records, cfg.max_length))
    trainer = ResponseLogitsSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    if cfg.lora.enabled and cfg.pure_bf16 and dt == torch.bfloat16 and not cfg.deepspeed:
        for param in trainer.model.parameters():  # peft made the adapters float32; pure bf16 means bf16 (no copy)
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return trainer


class LiveCurves(TrainerCallback):
    """Training curves for DVC, written with DVCLive into one folder: ``plots/metrics/{loss,learning_rate,tokens}.tsv``
    (one row per logging step, indexed by optimizer step) and the last values in ``metrics.json``.

    Rank 0 alone writes. DVCLive leaves dvc.yaml, git and experiments alone (dvc.yaml declares the folder) and makes
    no HTML report. ``tokens`` counts the non-padding tokens trained on since the previous row, over all processes.
    Every file is the same on every identical run (no timestamps, no throughput: wall time goes to the stage's
    ``train.json``), so DVC's hashes of the folder are too.
    """

    def __init__(self, live_dir: str | Path):
        self.live_dir = Path(live_dir)
        self.live = None
        self.tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from dvclive import Live

            self.live = Live(str(self.live_dir), report=None, save_dvc_exp=False, dvcyaml=None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.live is None or "loss" not in (logs or {}):  # the end-of-training summary has no "loss"
            return
        tokens = int(logs.get("num_tokens", self.tokens))  # TRL's running count, summed over processes
        self.live.step = state.global_step
        self.live.log_metric("loss", logs["loss"])
        self.live.log_metric("learning_rate", logs["learning_rate"])
        self.live.log_metric("tokens", tokens - self.tokens)
        self.live.make_summary()
        self.tokens = tokens

    def on_train_end(self, args, state, control, **kwargs):
        if self.live is not None:
            self.live.end()


def save_checkpoint(
    trainer, target: Path, final: Path, base_model: str | Path, cfg: TrainConfig, shard: Shard, trust_remote_code: bool
) -> None:
    """Write the trained model into ``target`` (to be renamed ``final``); called on every process.

    Everything goes through ``trainer.save_model``, which under ZeRO-3 gathers the 16-bit weights from every rank
    (``stage3_gather_16bit_weights_on_model_save``) and writes on rank 0 only. LoRA saves the adapter; with
    ``lora.merge`` rank 0 then merges it into a fresh copy of the base (the same code that loads adapter rounds),
    otherwise the folder keeps the adapter and the tokenizer, its base recorded relative to ``final``.
    """
    merge = cfg.lora.enabled and cfg.lora.merge
    saved = target.parent / "adapter" if merge else target
    if trainer.args.bf16 and not (cfg.lora.enabled or cfg.deepspeed):
        import torch  # float32 master weights (_load_dtype): saved in bfloat16, as the model runs and DeepSpeed saves

        trainer.model.to(torch.bfloat16)
    trainer.save_model(str(saved))
    if not shard.is_main:
        return
    # a pickle of the arguments (temp paths and all): neither safe to load nor the same on two identical runs
    (saved / "training_args.bin").unlink(missing_ok=True)
    make_tokenizer_portable(saved)
    make_config_portable(saved)  # rope_theta/rope_scaling for transformers 4 readers (OpenCompass)
    if not cfg.lora.enabled:
        return
    (saved / "README.md").unlink(missing_ok=True)  # peft's model card names the base by its path on this machine
    if merge:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # one process loads the base whole: no ZeRO-3 partitioned init (it would wait)
        dtype = trainer.model.get_base_model().dtype  # as trained (the LoRA weights themselves may be float32)
        model = merged_adapter_model(saved, base_model, dtype, trust_remote_code)
        model.save_pretrained(target)
        trainer.processing_class.save_pretrained(target)
        make_tokenizer_portable(target)
        make_config_portable(target)
    else:
        record_adapter_base(target, base_model, final)


def _needs_group_of_one(cfg: TrainConfig, dev) -> bool:
    """Whether one process with no launcher must train as rank 0 of a process group of one.

    DeepSpeed finds its ranks in torchrun's environment, else through MPI (``mpi4py``, rarely installed); and with
    several GPUs visible transformers wraps the model in ``nn.DataParallel``, which TRL refuses, where one rank of a
    group drives ``cuda:0`` alone. One process on one GPU or on the CPU trains as it always did.
    """
    import torch

    return bool(cfg.deepspeed) or (dev.type == "cuda" and dev.index is None and torch.cuda.device_count() > 1)


def _global_batch(args) -> tuple[int, str, str, str]:
    """The samples per optimizer step as the trainer will run them, and its three factors, named for the log."""
    per_device, accum, world = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    factors = (f"{per_device} per device", f"{accum} accumulation", f"{world} process{'es' * (world > 1)}")
    return (per_device * accum * world, *factors)


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
    live_dir: str | Path | None = None,
) -> dict:
    """Fine-tune and write ``out_dir`` (safetensors, tokenizer, ``train_metrics.json``) atomically.

    The checkpoint folder holds only what is the same on every identical run (weights, losses, counts), so two
    clean ``dvc repro`` runs give the same hash; wall time and throughput go to ``metrics_path`` (a DVC metric),
    as ``{"train": scalars}``, the versions, device and dtype used to its env record. With ``lora.merge: false`` the
    folder holds the adapter instead of a full model (:func:`middo.modeling.load_model` loads either).

    Args:
        data_path: the file ``records`` came from; only named in errors.
        live_dir: where :class:`LiveCurves` writes the training curves (None: not logged).

    Returns:
        The metrics on rank 0; an empty dict on the other ranks of a torchrun job (they write nothing).

    Raises:
        MiddoError: no records, or none with a response token left after truncation to ``train.max_length``
            (checked before training starts; nothing is written), or an option needs what is not installed.
    """
    where = data_path or "train"  # the stage passes the file; a caller with records in memory gets the stage name
    if not records:
        raise MiddoError(f"{where}: the dataset is empty (0 records); nothing to train on")
    dev = resolve_device(device)
    backend = "gloo" if dev.type == "cpu" else None  # gloo for CPU training, even where CUDA exists
    with contextlib.ExitStack() as stack:
        if _needs_group_of_one(cfg, dev):
            stack.enter_context(one_process_group(backend))
        device = local_device(device)  # under torchrun each process drives cuda:LOCAL_RANK
        shard = from_env(backend)  # join the process group first; the trainer reuses it
        with atomic_dir_on_main(out_dir, shard) as target:
            trainer = build_trainer(
                records, base_model, target.parent / "trainer", cfg, seed, device, dtype, trust_remote_code
            )
            check_trainable(trainer, len(records), where, cfg)
            if live_dir is not None:
                trainer.add_callback(LiveCurves(live_dir))
            env = environment(device=device_name(trainer.args.device), dtype=_precision(trainer.args))
            batch = _global_batch(trainer.args)
            if shard.is_main:
                print(f"train: global batch {batch[0]} = {' x '.join(map(str, batch[1:]))}", flush=True)
            start = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - start
            save_checkpoint(trainer, target, Path(out_dir), base_model, cfg, shard, trust_remote_code)
            if not shard.is_main:
                return {}
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            # tokens actually seen (TRL logs a running count); max_steps can stop before the epoch ends
            seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
            n_tokens = int(seen[-1]) if seen else int(sum(map(len, trainer.train_dataset["input_ids"])) * cfg.epochs)
            metrics = {
                "samples": len(records),
                # TRL drops samples whose response was cut off entirely by max_length; count them, never hide them
                "dropped_fully_truncated": len(records) - len(trainer.train_dataset),
                "processes": shard.world,
                "effective_batch_size": batch[0],
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
        write_metrics(metrics_path, {"train": scalars}, env)
    return metrics
