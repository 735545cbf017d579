"""The quality judge through vLLM (``diagnose.quality.engine: vllm``), as the reference's ``quality_infer.py``.

vLLM needs CUDA and its own env, so it cannot run here. The protocol around it (the judge prompts written, the child
process and its environment, the arguments that reach ``vllm.LLM`` and ``SamplingParams``, the answers read back and
parsed) runs on CPU against ``vllm_stand_in/``, a stand-in package with vLLM's offline API over transformers; the
real vLLM runs in the GPU test at the end (skipped without CUDA and vllm).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from middo.diagnose.quality import JUDGEMENTS, judge_generate
from middo.diagnose.quality_vllm import (
    check_vllm,
    child_env,
    engine_kwargs,
    judge_vllm,
    read_answers,
    sampling_kwargs,
    uses_vllm,
)
from middo.errors import MiddoError
from middo.records import Record

STAND_IN = Path(__file__).with_name("vllm_stand_in")
RECORDS = [
    Record(id="g", instruction="What is the capital of France?", output="The capital of France is Paris."),
    Record(id="b", instruction="wat capital france", output="Berlin is a big city in Spain, I think maybe."),
]


def test_the_reference_judge_sampling_reaches_vllm_as_its_own_arguments():
    # quality_infer.py lines 40-46 (Word2VecT/Middo 4e24d6f): temperature 0.1, top_p 0.7, top_k 50, 1024 new tokens,
    # repetition_penalty 1.0
    assert sampling_kwargs(0.1, 0.7, 50, 1024) == {
        "temperature": 0.1,
        "top_p": 0.7,
        "top_k": 50,
        "max_tokens": 1024,
        "repetition_penalty": 1.0,
        "skip_special_tokens": True,
    }
    assert sampling_kwargs(0.0, 1.0, 0, 8)["top_k"] == -1  # our "0 = every token" is vLLM's -1


def test_only_a_generate_judge_on_the_vllm_engine_uses_vllm():
    from middo.config import QualityConfig

    assert uses_vllm(QualityConfig(mode="generate", engine="vllm"))
    assert uses_vllm(QualityConfig(mode="logits", engine="vllm", compare_modes=True))  # the compared mode decodes
    assert not uses_vllm(QualityConfig(mode="logits", engine="vllm"))
    assert not uses_vllm(QualityConfig(mode="generate", engine="hf"))


def test_the_child_leaves_torchrun_and_drives_only_its_ranks_gpu():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    env = child_env({**torchrun, "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}, 1)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3"}  # the physical GPU behind this rank's cuda:1
    assert child_env({"PATH": "/bin"}, 1)["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(MiddoError, match=r"cuda:2 is not among CUDA_VISIBLE_DEVICES=2,3"):
        child_env({"CUDA_VISIBLE_DEVICES": "2,3"}, 2)


def test_the_engine_is_sized_for_the_judge_prompt_and_an_adapter_runs_as_base_plus_lora(base_model_dir, tmp_path):
    engine, lora = engine_kwargs(
        base_model_dir,
        "bfloat16",
        cutoff=4096,
        max_new_tokens=1024,
        gpu_memory_utilization=0.8,
        seed=0,
        trust_remote_code=False,
    )
    assert lora is None and "enable_lora" not in engine
    assert engine["model"] == str(base_model_dir.resolve()) and engine["dtype"] == "bfloat16"
    assert engine["max_model_len"] == 4096 + 1024 and engine["gpu_memory_utilization"] == 0.8
    assert engine["tensor_parallel_size"] == 1  # quality_infer.py: one GPU per vLLM
    window = json.loads((base_model_dir / "config.json").read_text())["max_position_embeddings"]  # SmolLM2: 8192
    sized = lambda cutoff, new: engine_kwargs(  # noqa: E731
        base_model_dir, "bfloat16", cutoff=cutoff, max_new_tokens=new, gpu_memory_utilization=0.8, seed=0,
        trust_remote_code=False,
    )[0]  # fmt: skip
    assert sized(window, 1024)["max_model_len"] == window  # never above the model's window: vLLM would not start
    assert (
        "max_model_len"
        not in engine_kwargs(
            base_model_dir,
            "bfloat16",
            cutoff=0,
            max_new_tokens=8,
            gpu_memory_utilization=0.8,
            seed=0,
            trust_remote_code=False,
        )[0]
    )

    adapter = tmp_path / "round_1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 20, "peft_type": "LORA"}))
    from middo.modeling import record_adapter_base

    record_adapter_base(adapter, base_model_dir)
    engine, lora = engine_kwargs(
        adapter, "bfloat16", cutoff=0, max_new_tokens=8, gpu_memory_utilization=0.8, seed=0, trust_remote_code=False
    )
    assert engine["model"] == str(base_model_dir.resolve()) and engine["tokenizer"] == str(adapter.resolve())
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 32  # r=20 rounded up to a rank vLLM takes
    assert lora == {"name": "current", "id": 1, "path": str(adapter.resolve())}


def test_a_vllm_judge_that_cannot_run_says_so_before_any_model_is_loaded(tmp_path):
    with pytest.raises(MiddoError, match=r"engine: vllm needs a CUDA GPU .*engine: hf"):
        check_vllm("", "cpu")
    with pytest.raises(MiddoError, match=r"diagnose.quality.vllm_python: /nowhere/python does not exist"):
        check_vllm("/nowhere/python", "cuda")
    with pytest.raises(MiddoError, match=r"cannot import vllm .*vllm_python"):
        check_vllm(sys.executable, "cuda")  # middo's env never has vllm

    from middo.config import DiagnoseConfig, QualityConfig
    from middo.diagnose.run import diagnose_dataset

    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"s{i}", "instruction": f"q{i}", "output": "a"}) + "\n" for i in range(4))
    )
    cfg = DiagnoseConfig(quality=QualityConfig(mode="generate", engine="vllm"))
    with pytest.raises(MiddoError, match=r"engine: vllm needs a CUDA GPU"):  # not "models/none is not a model folder"
        diagnose_dataset(
            data,
            "models/none",
            "models/none",
            tmp_path / "out",
            tmp_path / "d.json",
            cfg,
            "cpu",
            "float32",
            False,
            max_length=64,
        )


def test_answers_missing_or_malformed_are_named(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"i": 0, "text": "7", "finish": "stop"}) + "\n")
    assert read_answers(answers, [0]) == {0: ("7", "stop")}
    with pytest.raises(MiddoError, match=r"answers.jsonl: 1 judge prompts have no answer \(first: judgement 3\)"):
        read_answers(answers, [0, 3])
    answers.write_text(json.dumps({"i": 0, "text": "7"}) + "\n" + "{not json\n")
    with pytest.raises(MiddoError, match=r"answers.jsonl:2: not a judge answer"):
        read_answers(answers, [0])
    with pytest.raises(MiddoError, match=r"the vLLM judge wrote no answers"):
        read_answers(tmp_path / "none.jsonl", [0])


def _stand_in_env(log: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": pythonpath, "VLLM_STAND_IN_LOG": str(log), "RANK": "0", "WORLD_SIZE": "1"}


@pytest.mark.slow
def test_the_vllm_protocol_gives_the_hf_judges_answers_and_sends_the_reference_settings(scoring_model, tmp_path):
    """Greedy answers through the child process equal the HF judge's (same prompts, same parse), and what reached
    the engine is the params' sampling, each request seeded by its judgement's index, torchrun's variables gone."""
    lm = scoring_model
    log = tmp_path / "vllm.log"
    common = {"max_new_tokens": 4, "cutoff": 0, "max_chars": 2000}
    result, answers = judge_vllm(
        scoring_model.path,
        lm.tokenizer,
        RECORDS,
        python=sys.executable,
        dtype="float32",
        gpu_index=0,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        gpu_memory_utilization=0.5,
        environ=_stand_in_env(log),
        **common,
    )
    # one sequence per batch (max_tokens 1): no padding, so float32 greedy decoding is the same computation
    hf, hf_answers = judge_generate(lm.model, lm.tokenizer, RECORDS, lm.device, max_tokens=1, **common)
    assert answers == hf_answers and len(answers) == len(RECORDS) * len(JUDGEMENTS)
    np.testing.assert_array_equal(result.scores, hf.scores)
    assert result.status_counts == hf.status_counts

    events = [json.loads(line) for line in log.read_text().splitlines()]
    start, requests = events[0], events[1:]
    assert start["torchrun_vars"] == [] and start["cuda_visible_devices"] == "0"
    assert start["engine"]["model"] == str(Path(scoring_model.path).resolve())
    assert [r["sampling"]["seed"] for r in requests] == list(range(len(RECORDS) * len(JUDGEMENTS)))
    assert {r["sampling"]["max_tokens"] for r in requests} == {4}


@pytest.mark.gpu
def test_the_vllm_judge_answers_as_the_hf_judge_on_a_gpu(base_model_dir):
    """The real vLLM on CUDA: greedy judge answers agree with the HF judge's on the default model (bfloat16 kernels
    differ, so most, not all, answers must match)."""
    from middo.optional import is_available

    if not is_available("vllm"):
        pytest.skip("vllm is not installed in this env (it replaces torch; see diagnose.quality.vllm_python)")
    from middo.modeling import load_model

    lm = load_model(base_model_dir, "cuda", "bfloat16")
    common = {"max_new_tokens": 8, "cutoff": 0, "max_chars": 2000}
    hf, hf_answers = judge_generate(lm.model, lm.tokenizer, RECORDS, lm.device, **common)
    _, answers = judge_vllm(
        base_model_dir,
        lm.tokenizer,
        RECORDS,
        python=check_vllm("", "cuda"),
        dtype="bfloat16",
        gpu_index=0,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        gpu_memory_utilization=0.5,
        **common,
    )
    same = sum(a == b for a, b in zip(answers, hf_answers))
    assert same >= 0.75 * len(answers), list(zip(answers, hf_answers))


@pytest.mark.slow
def test_the_stage_sends_its_quality_params_to_vllm_after_the_hf_judge(scoring_model, tmp_path, monkeypatch):
    """``diagnose.quality.*`` reach vLLM from the stage's config (the paper presets' sampling here), and with
    ``compare_modes`` the logits judge runs first: vLLM's child needs the GPU memory the HF model gives up."""
    from middo.config import DiagnoseConfig, QualityConfig
    from middo.diagnose.run import _quality
    from middo.distributed import Shard

    log = tmp_path / "vllm.log"
    for k, v in _stand_in_env(log).items():
        monkeypatch.setenv(k, v)
    q = QualityConfig(
        mode="generate",
        engine="vllm",
        compare_modes=True,
        temperature=0.1,
        top_p=0.7,
        top_k=50,
        max_new_tokens=2,
        cutoff=4096,
        max_chars=0,
        gpu_memory_utilization=0.6,
    )
    seconds: dict[str, float] = {}
    vllm = {"python": sys.executable, "model_path": scoring_model.path, "trust_remote_code": False}
    result, info = _quality(DiagnoseConfig(quality=q), scoring_model, RECORDS, Shard(), seconds, vllm)
    assert list(seconds) == ["logits", "generate"] and info["engine"] == "vllm" and info["mode"] == "generate"
    assert result.scores.shape == (len(RECORDS), len(JUDGEMENTS)) and "agreement" in info
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["engine"]["gpu_memory_utilization"] == 0.6 and events[0]["engine"]["max_model_len"] == 4096 + 2
    sent = {json.dumps({k: v for k, v in e["sampling"].items() if k != "seed"}, sort_keys=True) for e in events[1:]}
    assert [json.loads(s) for s in sent] == [sampling_kwargs(0.1, 0.7, 50, 2)]
    assert len(events) - 1 == len(RECORDS) * len(JUDGEMENTS)
