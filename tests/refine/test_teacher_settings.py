"""refine.teacher's request settings end to end: structured output, the system prompt and extra body fields reach a
real OpenAI-compatible server on 127.0.0.1, change the cache's key, and reach each backend's constructor."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace

import pytest
from scripted_teacher import NEW_PROMPT, answer_to, read_request, well_formed
from test_refine_stage import RECORDS, _assert_counts_add_up, _inputs, _openai, _refine

from middo.config import TeacherConfig, VllmEngineConfig
from middo.refine.prompts import REWRITE_SCHEMA
from middo.refine.run import build_teacher, teacher_identity, teacher_kwargs
from middo.teachers import BACKENDS
from middo.teachers.base import Sampling
from middo.teachers.cache import server_identity

STRUCTURED = {
    "type": "json_schema",
    "json_schema": {"name": "rewrite", "schema": REWRITE_SCHEMA, "strict": True},
}
JOBS = {"hard": "simplify", "poor": "improve", "rare": "diversify"}


def _teacher_server(fake_server, completion, honours_schema: bool = True):
    """The scripted capable teacher; a rewrite asked with a JSON schema is answered in JSON when ``honours_schema``
    (as vLLM's guided decoding would), in tagged text otherwise (a server that ignores response_format)."""

    def respond(i, body):
        request = read_request(body["messages"][-1]["content"])
        if request.op != "answer" and honours_schema and "response_format" in body:
            new = NEW_PROMPT[request.op](request.prompt)
            return 200, completion(json.dumps({"analysis": "Step 1 - Difficulties: jargon.", "prompt": new}))
        return 200, completion(well_formed(request))

    return fake_server(respond)


def _rewrites(server) -> list[dict]:
    return [p for p in server.posts if read_request(p["messages"][-1]["content"]).op != "answer"]


def _answers(server) -> list[dict]:
    return [p for p in server.posts if read_request(p["messages"][-1]["content"]).op == "answer"]


def _check_children(out):
    by_id = {r.id: r for r in RECORDS}
    children = {r.parent_id: r for r in out if r.parent_id is not None}
    assert children.keys() == JOBS.keys()
    for rid, op in JOBS.items():
        assert children[rid].instruction == NEW_PROMPT[op](by_id[rid].prompt_text)
        assert children[rid].output == answer_to(children[rid].instruction)


@pytest.mark.parametrize("honours_schema", [True, False])
def test_structured_output_asks_rewrites_as_json_and_reads_the_reply(
    fake_server, completion, tmp_path, honours_schema
):
    _inputs(tmp_path)
    server = _teacher_server(fake_server, completion, honours_schema)
    report, out, metrics = _refine(tmp_path, _openai(server, tmp_path, structured_output=True))
    assert len(_rewrites(server)) == 3 and all(p["response_format"] == STRUCTURED for p in _rewrites(server))
    assert len(_answers(server)) == 3 and not any("response_format" in p for p in _answers(server))
    # a JSON reply has no <prompt> block, so only the JSON reading could have found these prompts
    _check_children(out)
    changes = [json.loads(line) for line in (metrics / "changes.jsonl").read_text().splitlines()]
    assert {c["parent_id"]: c["status"] for c in changes} == dict.fromkeys(JOBS, "ok")
    if honours_schema:
        assert all(json.loads(c["reply"])["analysis"] for c in changes if "reply" in c)
    assert (report["added"], report["unusable"]) == (3, 0)
    _assert_counts_add_up(report, out)


def test_structured_output_is_a_different_rewrite_request_for_the_cache(fake_server, completion, tmp_path):
    """Turning structured output off asks the rewrites again (their requests differ) but replays the answers (the
    same new prompts, asked the same way)."""
    _inputs(tmp_path)
    server = _teacher_server(fake_server, completion)
    _, structured, _ = _refine(tmp_path, _openai(server, tmp_path, structured_output=True), tag="structured")
    sent = len(server.posts)
    _, free, _ = _refine(tmp_path, _openai(server, tmp_path), tag="free")
    asked = server.posts[sent:]
    assert len(asked) == 3 and all("response_format" not in p for p in asked)
    assert {read_request(p["messages"][-1]["content"]).op for p in asked} == set(JOBS.values())
    assert free == structured


def test_system_prompt_and_extra_body_reach_the_server_and_key_the_cache(fake_server, completion, tmp_path):
    _inputs(tmp_path)
    server = _teacher_server(fake_server, completion)
    extra = {"chat_template_kwargs": {"enable_thinking": False}}
    settings = {"system_prompt": "You are a careful data editor.", "extra_body": extra}
    _, out, _ = _refine(tmp_path, _openai(server, tmp_path, **settings), tag="with")
    assert len(server.posts) == 6
    for post in server.posts:
        assert post["messages"][0] == {"role": "system", "content": "You are a careful data editor."}
        assert post["chat_template_kwargs"] == {"enable_thinking": False}
    _check_children(out)
    sent = len(server.posts)
    _refine(tmp_path, _openai(server, tmp_path, **settings), tag="again")
    assert len(server.posts) == sent  # the same settings: every call replayed from the cache
    for changed in ({**settings, "system_prompt": "Be terse."}, {**settings, "extra_body": {}}):
        before = len(server.posts)
        _refine(tmp_path, _openai(server, tmp_path, **changed), tag="changed")
        assert len(server.posts) == before + 6  # other settings: every call asked afresh


def test_build_teacher_keys_on_the_request_settings_only_when_set(tmp_path):
    cfg = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:1/v1", cache_dir=str(tmp_path))
    assert build_teacher(cfg, "cpu", "float32").identity == server_identity("m", "http://127.0.0.1:1/v1", "")
    identities = [
        build_teacher(TeacherConfig(**{**vars(cfg), **change}), "cpu", "float32").identity
        for change in ({}, {"system_prompt": "Be terse."}, {"extra_body": {"top_k": 20}}, {"extra_body": {"top_k": 5}})
    ]
    assert len({json.dumps(i, sort_keys=True) for i in identities}) == 4


def test_each_backend_gets_its_settings(tmp_path):
    engine = VllmEngineConfig(tensor_parallel_size=2, max_model_len=4096, gpu_memory_utilization=0.8)
    vllm = TeacherConfig(backend="vllm", model="org/teacher", system_prompt="Be terse.", vllm=engine)
    assert teacher_kwargs(vllm, "cuda", "bfloat16") == {
        "model_path": "org/teacher",
        "tensor_parallel_size": 2,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.8,
        "system_prompt": "Be terse.",
    }
    served = TeacherConfig(
        backend="openai",
        system_prompt="Be terse.",
        extra_body={"top_k": 20},
        token_limit_param="max_completion_tokens",
    )
    sent = teacher_kwargs(served, "cpu", "float32")
    assert (sent["system_prompt"], sent["extra_body"], sent["token_limit_param"]) == (
        "Be terse.",
        {"top_k": 20},
        "max_completion_tokens",
    )
    local = TeacherConfig(backend="transformers", system_prompt="Be terse.")
    assert teacher_kwargs(local, "cpu", "float32")["system_prompt"] == "Be terse."


def _local_teacher(base_model_dir, tmp_path, device: str, dtype: str):
    from tiny_models import tiny_model

    model = tiny_model(base_model_dir, tmp_path / "tiny")
    cfg = TeacherConfig(backend="transformers", model=str(model), cache_dir=str(tmp_path / "cache"))
    return build_teacher(cfg, device, dtype)


@pytest.mark.slow
def test_a_local_teachers_cache_key_names_its_dtype_and_device(base_model_dir, tmp_path, one_torch_thread):
    """bfloat16 and float32 greedy replies differ, so a reply cached under one must not answer the other."""
    import torch

    from middo.device import cpu_has_native_bf16

    f32 = _local_teacher(base_model_dir, tmp_path, "cpu", "float32")
    bf16 = _local_teacher(base_model_dir, tmp_path, "cpu", "bfloat16")
    assert (f32.teacher.loaded.model.dtype, bf16.teacher.loaded.model.dtype) == (torch.float32, torch.bfloat16)
    assert (f32.identity["device"], f32.identity["dtype"], bf16.identity["dtype"]) == ("cpu", "float32", "bfloat16")
    assert {**f32.identity, "dtype": "bfloat16"} == bf16.identity  # the same weights: only the dtype differs
    # "auto" is keyed on what it resolves to on this machine, so it shares the matching explicit setting's replies
    auto = _local_teacher(base_model_dir, tmp_path, "cpu", "auto")
    assert auto.identity == (bf16 if cpu_has_native_bf16() else f32).identity

    sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=7)  # greedy, the random model says nothing
    (reply,) = f32.complete(["Name a colour."], sampling)
    assert reply and (f32.hits, f32.misses) == (0, 1)
    assert bf16.complete(["Name a colour."], sampling) != [None] and (bf16.hits, bf16.misses) == (0, 1)  # asked
    again = _local_teacher(base_model_dir, tmp_path, "cpu", "float32")
    assert again.complete(["Name a colour."], sampling) == [reply] and (again.hits, again.misses) == (1, 0)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_local_teachers_cache_key_differs_between_cpu_and_cuda(base_model_dir, tmp_path):
    """A CPU's and a GPU's kernels round differently, so the same weights and dtype still give two keys."""
    cpu = _local_teacher(base_model_dir, tmp_path, "cpu", "float32")
    gpu = _local_teacher(base_model_dir, tmp_path, "cuda", "float32")
    assert (cpu.identity["device"], gpu.identity["device"]) == ("cpu", "cuda")
    assert {**cpu.identity, "device": "cuda"} == gpu.identity


@pytest.mark.parametrize("preset", ["paper.yaml", "paper-mistral.yaml"])
def test_the_paper_presets_ask_the_teacher_as_the_reference_does(preset, tmp_path):
    """The reference (Word2VecT/Middo *_synthetic.py) builds DataDreamer's ``OpenAI(model_name="gpt-4o-mini")`` and
    passes no max_new_tokens, so DataDreamer asks for up to gpt-4o-mini's output limit, 16384 (DataDreamer
    src/llms/openai.py ``_get_max_output_length``), and sends its default system prompt for chat models, "You are a
    helpful assistant." (same file, ``OpenAI.__init__``). Both reach the openai backend's constructor."""
    from pathlib import Path

    from middo.config import load_params
    from middo.presets import apply_preset

    root = Path(__file__).resolve().parents[2]
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text())
    apply_preset(params, root / "presets" / preset)
    teacher = load_params(params).refine.teacher
    assert (teacher.model, teacher.max_new_tokens) == ("gpt-4o-mini", 16384)
    assert teacher.system_prompt == "You are a helpful assistant."
    assert teacher_kwargs(teacher, "cpu", "float32")["system_prompt"] == "You are a helpful assistant."


class _ShoutingTeacher:
    """A backend this test adds: it answers in capitals and says which setting it was built from."""

    backend = "shout"
    served = False

    def __init__(self, model: str, loudness: int):
        self.model, self.loudness = model, loudness

    @classmethod
    def config_kwargs(cls, cfg, device: str, dtype: str) -> dict:
        return {"model": cfg.model, "loudness": cfg.max_new_tokens}

    @classmethod
    def cache_identity(cls, cfg, device: str, dtype: str) -> dict[str, str]:
        return {"backend": cls.backend, "model": cfg.model, "where": device}

    def complete(self, prompts: list[str], sampling) -> list[str]:
        return [p.upper() + "!" * self.loudness for p in prompts]


def test_a_new_backend_plugs_in_through_the_teacher_registry_alone(tmp_path, monkeypatch):
    """refine builds any registered backend from its own ``config_kwargs`` and keys its cache on its own
    ``cache_identity``: nothing in refine names a backend."""
    module = types.ModuleType("middo_test_shout")
    module.ShoutingTeacher = _ShoutingTeacher
    monkeypatch.setitem(sys.modules, "middo_test_shout", module)
    monkeypatch.setitem(BACKENDS, "shout", "middo_test_shout:ShoutingTeacher")
    cfg = replace(TeacherConfig(), backend="shout", model="loud", max_new_tokens=2, cache_dir=str(tmp_path))
    teacher = build_teacher(cfg, "cpu", "float32")
    assert teacher.identity == {"backend": "shout", "model": "loud", "where": "cpu"}
    assert teacher.complete(["hi"], Sampling(max_new_tokens=2)) == ["HI!!"]
    assert teacher_identity(cfg, "meta", "float32")["where"] == "meta"
