import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from middo.config import TrainConfig
from middo.errors import MiddoError
from middo.provenance import PACKAGES
from middo.records import Record
from middo.train import build_trainer, check_gpu_paths, check_trainable, train_sft

ROOT = Path(__file__).resolve().parents[1]

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
    samples = []  # padding-free: one row, each sample's positions restarting at 0; padded: one sample per row
    positions = batch.get("position_ids", torch.zeros_like(batch["input_ids"][:, :1]))
    for row in range(batch["input_ids"].shape[0]):
        ends = (positions[row] == 0).nonzero().flatten().tolist()[1:] + [batch["input_ids"].shape[1]]
        starts = [0, *ends[:-1]]
        samples += [(batch["input_ids"][row, a:b], batch["labels"][row, a:b]) for a, b in zip(starts, ends)]
    assert len(samples) == len(RECORDS)
    for ids, labels in samples:
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
def test_padding_free_batches_train_on_the_padded_batches_tokens_with_the_same_loss(base_model_dir, tmp_path):
    """A padding-free batch (one row, position ids restarting per sample) computes no padding token and gives the
    padded batch's loss and gradients: attention does not cross from one sample into the next."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    losses, grads, shapes = {}, {}, {}
    for padding_free in (False, True):
        cfg = replace(TINY, padding_free=padding_free)
        trainer = build_trainer(RECORDS, model, tmp_path / f"pf{padding_free}", cfg, 42, "cpu", "float32", False)
        batch = next(iter(trainer.get_train_dataloader()))
        shapes[padding_free] = tuple(batch["input_ids"].shape)
        trainer.model.zero_grad()
        loss = trainer.model(**batch).loss
        loss.backward()
        losses[padding_free] = float(loss.detach())
        grads[padding_free] = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    lengths = [len(row) for row in trainer.train_dataset["input_ids"]]
    assert shapes[True] == (1, sum(lengths)) and shapes[False] == (len(RECORDS), max(lengths))
    assert sum(lengths) < len(RECORDS) * max(lengths)  # the padded batch computed padding
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert torch.allclose(grads[True], grads[False], atol=1e-5)


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
    assert list(saved_metrics) == ["train"] and timing["seconds"] > 0 and timing["steps"] == 6
    env = json.loads((metrics_path.parent / "env" / metrics_path.name).read_text())
    assert set(env) == {"python", *PACKAGES, "device", "dtype", "cpu"}
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp dir cleaned up

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    after = model.state_dict()
    unchanged = [k for k, v in before.items() if k in after and torch.equal(v, after[k])]
    assert not unchanged, f"parameters that did not train: {unchanged[:5]}"
    ids = tok.apply_chat_template(
        RECORDS[1].messages(False), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


# case -> (train.pure_bf16, LoRA): the dtype of what AdamW updates, and of its moments, must not depend on LoRA
MASTER_WEIGHTS = {"full": (False, False), "full-pure": (True, False), "lora": (False, True), "lora-pure": (True, True)}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MASTER_WEIGHTS))
def test_bf16_training_keeps_float32_master_weights_unless_pure(base_model_dir, tmp_path, case):
    """base.dtype bfloat16 without DeepSpeed: the trained weights and AdamW's exp_avg/exp_avg_sq are float32 (the
    compute still runs in bf16 under autocast) unless train.pure_bf16; LoRA's frozen base stays bfloat16. A full
    fine-tune is saved in bfloat16 either way, as the run computed."""
    from middo.distributed import Shard
    from middo.train import save_checkpoint

    pure, lora = MASTER_WEIGHTS[case]
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    cfg = replace(TINY, max_steps=2, pure_bf16=pure, lora=replace(TINY.lora, enabled=lora, merge=False))
    trainer = build_trainer(
        RECORDS, model, tmp_path / "t", cfg, seed=0, device="cpu", dtype="bfloat16", trust_remote_code=False
    )
    down = next(m for name, m in trainer.model.named_modules() if name.endswith("layers.0.mlp.down_proj"))
    computed = set()
    hook = down.register_forward_hook(lambda module, args, out: computed.add(out.dtype))
    trainer.train()
    hook.remove()

    want = torch.bfloat16 if pure else torch.float32
    trained = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {want}, trained
    assert set(frozen.values()) == ({torch.bfloat16} if lora else set()), frozen
    moments = [t for state in trainer.optimizer.state.values() for t in (state["exp_avg"], state["exp_avg_sq"])]
    assert len(moments) == 2 * len(trained) and {m.dtype for m in moments} == {want}
    assert computed == {torch.bfloat16}  # bf16 autocast: master weights cost no float32 compute
    assert trainer.state.global_step == 2

    if not lora:
        from safetensors.torch import load_file

        out = tmp_path / "saved"
        out.mkdir()
        save_checkpoint(trainer, out, out, model, cfg, Shard(), trust_remote_code=False)
        assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


def test_missing_gpu_packages_give_clear_message():
    from middo.optional import is_available

    for cfg, module, pip_name in (
        (TrainConfig(liger=True), "liger_kernel", "liger-kernel"),
        (TrainConfig(attn_implementation="flash_attention_2"), "flash_attn", "flash-attn"),
    ):
        if not is_available(module):  # the CPU env: the package is named with the command that installs it
            with pytest.raises(MiddoError, match=f"needs the '{pip_name}' package: pip install {pip_name} "):
                check_gpu_paths(cfg)
        elif not torch.cuda.is_available():  # installed, but no GPU to run it on
            with pytest.raises(MiddoError, match=r"needs a CUDA GPU; torch\.cuda\.is_available\(\) is False"):
                check_gpu_paths(cfg)
        else:
            check_gpu_paths(cfg)  # package and GPU both here: nothing to refuse
    with pytest.raises(MiddoError, match="deepspeed"):
        check_gpu_paths(TrainConfig(deepspeed="configs/deepspeed/nope.json"))


def test_empty_dataset_is_refused_naming_the_data(tmp_path):
    data = tmp_path / "data" / "round_2" / "train.jsonl"
    with pytest.raises(MiddoError, match=f"^{data}: the dataset is empty"):
        train_sft([], tmp_path / "no-model", tmp_path / "out", TINY, 42, "cpu", "float32", False, data_path=data)


@pytest.mark.slow
def test_a_prompt_longer_than_max_length_gives_way_to_the_response(base_model_dir, tmp_path):
    """Every chat-formatted prompt is longer than 16 tokens: the prompt is trimmed and the response's first tokens
    are trained on, packed or not (LLaMA-Factory's cut); cutting the sequence's end once left nothing to train on."""
    from middo.diagnose.complexity import tokenize_for_loss
    from middo.modeling import load_tokenizer

    model = tiny_model(base_model_dir, tmp_path / "tiny")
    tok = load_tokenizer(model)
    for packing in (False, True):
        cfg = replace(TINY, max_length=16, packing=packing)
        trainer = build_trainer(RECORDS, model, tmp_path / f"run{packing}", cfg, 42, "cpu", "float32", False)
        check_trainable(trainer, len(RECORDS), tmp_path / "train.jsonl", cfg)  # nothing to refuse
        labels = [label for row in trainer.train_dataset for label in row["labels"]]
        assert len(labels) == 16 * len(RECORDS)  # no sample dropped (packed: four full blocks)
        scored = []
        for (full, n_prompt), (whole, n_whole) in zip(
            tokenize_for_loss(tok, RECORDS, 16), tokenize_for_loss(tok, RECORDS, 10**6), strict=True
        ):
            assert len(full) == 16 and 0 < n_prompt < 16  # the prompt gave way
            assert full[n_prompt:] == whole[n_whole : n_whole + 16 - n_prompt]  # to the response's first tokens
            scored += full[n_prompt:]
        assert sorted(label for label in labels if label != -100) == sorted(scored)  # trained tokens = scored ones


@pytest.mark.slow
def test_training_curves_go_to_dvclive(base_model_dir, tmp_path, monkeypatch):
    """One row per logging step, indexed by optimizer step; metrics.json holds the last values; nothing else."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)  # DVCLive must not write a dvc.yaml, a report or an experiment anywhere
    live = tmp_path / "metrics" / "round_1" / "train"
    cfg = replace(TINY, max_steps=6, logging_steps=2, batch_size=2, max_length=64)
    m = train_sft(
        RECORDS,
        model,
        tmp_path / "m",
        cfg,
        seed=0,
        device="cpu",
        dtype="float32",
        trust_remote_code=False,
        live_dir=live,
    )

    def rows(name):
        header, *lines = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert header == f"step\t{name}"  # no timestamp column: the file is the same on every identical run
        return [(int(s), float(v)) for s, v in (line.split("\t") for line in lines)]

    loss = rows("loss")
    assert [s for s, _ in loss] == [2, 4, 6]
    assert [v for _, v in loss] == pytest.approx(m["loss_history"])
    assert [s for s, _ in rows("learning_rate")] == [2, 4, 6]
    assert all(v == pytest.approx(cfg.learning_rate) for _, v in rows("learning_rate"))  # constant schedule
    assert sum(v for _, v in rows("tokens")) == m["tokens_seen"]
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 6 and summary["loss"] == pytest.approx(m["last_loss"])
    assert summary["learning_rate"] == pytest.approx(cfg.learning_rate)
    assert sorted(p.name for p in live.iterdir()) == ["metrics.json", "plots"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "metrics", "tiny"]


# Records every safetensors write and every rename, with the rank that did it (a torchrun job is several processes,
# so a monkeypatch in this one cannot see them). Loaded at interpreter start through PYTHONPATH.
SPY = """
import os, safetensors.torch
_log = os.environ["MIDDO_SPY_LOG"]
def _note(*fields):
    with open(_log, "a") as f:
        f.write("\\t".join([os.environ.get("RANK", "-"), *map(str, fields)]) + "\\n")
_save, _replace = safetensors.torch.save_file, os.replace
def save_file(tensors, filename, *a, **k):
    _note("save", filename)
    return _save(tensors, filename, *a, **k)
def replace(src, dst, *a, **k):
    _note("rename", src, dst)
    return _replace(src, dst, *a, **k)
safetensors.torch.save_file, os.replace = save_file, replace
"""


def _stage_params(tmp_path, processes: int | str, **train) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"].update(processes=processes, device="cpu", dtype="float32", seed=3)
    raw["train"].update(max_steps=4, learning_rate=5e-4, lr_scheduler="constant", warmup_ratio=0.0, max_length=64)
    for key, value in train.items():  # nested groups (lora) are updated, not replaced
        raw["train"][key] = {**raw["train"][key], **value} if isinstance(value, dict) else value
    path = tmp_path / f"params_{processes}_{len(list(tmp_path.glob('params_*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_train_stage(tmp_path, name: str, model: Path, params: Path, env: dict | None = None) -> Path:
    """``stages/train.py`` as dvc.yaml runs it (it relaunches itself under torchrun when base.processes > 1)."""
    from middo.dataio import write_jsonl

    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(
            [
                Record(
                    id=f"s{i}", instruction=f"What is {i} times 3?", output=f"{i} x 3 = {3 * i}." + " Yes." * (i % 3)
                )
                for i in range(8)
            ],
            data,
        )
    out = tmp_path / name
    cmd = [
        sys.executable,
        str(ROOT / "stages" / "train.py"),
        "--round=1",
        f"--data={data}",
        f"--base={model}",
        f"--out={out / 'models' / 'round_1'}",
        f"--metrics={out / 'metrics' / 'round_1' / 'train.json'}",
        f"--live={out / 'metrics' / 'round_1' / 'train'}",
        f"--params={params}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.mark.slow
def test_auto_processes_on_cpu_train_in_one_and_report_the_global_batch(base_model_dir, tmp_path):
    """base.processes: auto on a machine with no GPU is one process (no torchrun); the global batch (per-device
    batch x accumulation x processes) is printed before training and written to train.json."""
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    out = run_train_stage(tmp_path, "auto", model, _stage_params(tmp_path, "auto", batch_size=2, grad_accum=2))
    train = json.loads((out / "metrics" / "round_1" / "train.json").read_text())["train"]
    assert (train["processes"], train["effective_batch_size"], train["steps"]) == (1, 4, 4)
    assert "train: global batch 4 = 2 per device x 2 accumulation x 1 process\n" in (out / "stdout.txt").read_text()


@pytest.mark.slow
def test_two_processes_train_like_one(base_model_dir, tmp_path):
    """base.processes: 2 (gloo) with half the per-process batch takes the same steps as one process.

    Same samples per optimizer step (effective batch = batch_size * grad_accum * processes = 4 in both runs), and the
    loss is averaged over the tokens of all processes, so the runs differ only by float rounding: losses agree to a
    relative 1e-5 (measured: ~1e-7) and weights to 1e-5. The checkpoint is written once, by rank 0.
    """
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    one = run_train_stage(tmp_path, "one", model, _stage_params(tmp_path, 1, batch_size=4))
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    log = tmp_path / "spy.log"
    env = {"PYTHONPATH": os.pathsep.join([str(spy), os.environ.get("PYTHONPATH", "")]), "MIDDO_SPY_LOG": str(log)}
    two = run_train_stage(tmp_path, "two", model, _stage_params(tmp_path, 2, batch_size=2), env)

    m1, m2 = (json.loads((run / "models" / "round_1" / "train_metrics.json").read_text()) for run in (one, two))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert m1["effective_batch_size"] == m2["effective_batch_size"] == 4
    assert m1["steps"] == m2["steps"] == 4 and m1["tokens_seen"] == m2["tokens_seen"]
    assert m2["loss_history"] == pytest.approx(m1["loss_history"], rel=1e-5)
    curve1, curve2 = ((run / "metrics/round_1/train/plots/metrics/loss.tsv").read_text() for run in (one, two))
    assert curve1.splitlines()[0] == curve2.splitlines()[0] and len(curve1.splitlines()) == 5

    from safetensors.torch import load_file

    w1, w2 = (load_file(run / "models" / "round_1" / "model.safetensors") for run in (one, two))
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-5)

    final = two / "models" / "round_1"
    events = [line.split("\t") for line in log.read_text().splitlines()]
    saves = [e for e in events if e[1] == "save" and Path(e[2]).name == "model.safetensors"]
    assert [e[0] for e in saves] == ["0"], saves  # one weights file, written by rank 0
    renames = [e for e in events if e[1] == "rename" and Path(e[3]) == final]
    assert [e[0] for e in renames] == ["0"], renames  # one rename into place
    assert not [p for p in final.parent.iterdir() if p.name != "round_1"]  # no temp folder left behind

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(final, local_files_only=True)
    ids = tok("What is 2 times 3?", return_tensors="pt")
    assert reloaded.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
