"""The content-addressed cache: hits replay, misses go to the teacher once, a killed run resumes, and the key
follows what answers (a model's files, a server's name + URL + revision), not a path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middo.errors import MiddoError
from middo.teachers import CachedTeacher, Sampling, TeacherUnavailable
from middo.teachers.cache import (
    FINGERPRINTS,
    cache_key,
    local_identity,
    model_fingerprint,
    request_identity,
    server_identity,
)

SAMPLING = Sampling(max_new_tokens=16)
PROMPTS = [f"prompt {i}" for i in range(10)]
ECHO = {"backend": "echo", "model": "echo-1"}
VERSION = "v1"


def cached(teacher, cache_dir, **kwargs) -> CachedTeacher:
    return CachedTeacher(teacher, cache_dir, ECHO, VERSION, **kwargs)


class EchoTeacher:
    """A deterministic in-process teacher that records every batch it is asked for."""

    backend = "echo"

    def __init__(self, model: str = "echo-1", fail: set[str] = frozenset(), delay: float = 0.0):
        self.model = model
        self.fail = fail
        self.delay = delay
        self.calls: list[list[str]] = []

    def complete(self, prompts, sampling):
        self.calls.append(list(prompts))
        time.sleep(self.delay)
        return [None if p in self.fail else f"{self.model}:{p}:{sampling.temperature}" for p in prompts]

    @property
    def sent(self) -> list[str]:
        return [p for batch in self.calls for p in batch]


def test_first_run_misses_second_run_hits(tmp_path):
    first = cached(EchoTeacher(), tmp_path)
    out1 = first.complete(PROMPTS, SAMPLING)
    assert (first.hits, first.misses) == (0, 10)
    inner = EchoTeacher()
    second = cached(inner, tmp_path)
    assert second.complete(PROMPTS, SAMPLING) == out1
    assert (second.hits, second.misses, inner.calls) == (10, 0, [])


def test_layout_is_one_json_file_per_call(tmp_path):
    cached(EchoTeacher(), tmp_path).complete(["hello"], SAMPLING)
    key = cache_key(ECHO, VERSION, "hello", SAMPLING)
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry["output"] == "echo-1:hello:0.0" and entry["prompt"] == "hello" and entry["key"] == key
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]  # no temp files left


def test_key_covers_teacher_prompt_version_prompt_and_sampling():
    base = cache_key(ECHO, VERSION, "p", SAMPLING)
    assert base == cache_key(dict(ECHO), VERSION, "p", Sampling(max_new_tokens=16))
    others = [
        cache_key({**ECHO, "backend": "openai"}, VERSION, "p", SAMPLING),
        cache_key({**ECHO, "model": "echo-2"}, VERSION, "p", SAMPLING),
        cache_key(ECHO, "v2", "p", SAMPLING),
        cache_key(ECHO, VERSION, "p ", SAMPLING),
        cache_key(ECHO, VERSION, "p", Sampling(max_new_tokens=17)),
        cache_key(ECHO, VERSION, "p", Sampling(max_new_tokens=16, temperature=0.5)),
        cache_key(ECHO, VERSION, "p", Sampling(max_new_tokens=16, top_p=0.9)),
        cache_key(ECHO, VERSION, "p", Sampling(max_new_tokens=16, seed=1)),
    ]
    assert len({base, *others}) == 9


def test_server_key_changes_with_revision_url_and_name():
    keys = {
        cache_key(server_identity(*args), VERSION, "p", SAMPLING)
        for args in [
            ("m", "http://127.0.0.1:8000/v1", ""),
            ("m", "http://127.0.0.1:8000/v1", "2025-06-01"),
            ("m", "http://127.0.0.1:9000/v1", ""),
            ("m2", "http://127.0.0.1:8000/v1", ""),
        ]
    }
    assert len(keys) == 4
    assert server_identity("m", "http://h/v1/", "") == server_identity("m", "http://h/v1", "")  # one trailing slash


def test_a_new_revision_asks_the_server_again(tmp_path):
    old = CachedTeacher(EchoTeacher(), tmp_path, server_identity("m", "http://h/v1", "r1"), VERSION)
    old.complete(PROMPTS[:3], SAMPLING)
    same = CachedTeacher(EchoTeacher(), tmp_path, server_identity("m", "http://h/v1", "r1"), VERSION)
    same.complete(PROMPTS[:3], SAMPLING)
    bumped = CachedTeacher(EchoTeacher(), tmp_path, server_identity("m", "http://h/v1", "r2"), VERSION)
    bumped.complete(PROMPTS[:3], SAMPLING)
    assert (same.hits, same.misses, bumped.hits, bumped.misses) == (3, 0, 0, 3)


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("notes")
    return folder


def test_fingerprint_follows_the_files_not_the_path(tmp_path):
    memo = tmp_path / "cache" / FINGERPRINTS
    a = model_fingerprint(_model(tmp_path / "a", b"weights-1"), memo)
    assert a == model_fingerprint(_model(tmp_path / "copy_of_a", b"weights-1"), memo)
    assert a != model_fingerprint(_model(tmp_path / "b", b"weights-2"), memo)
    (tmp_path / "a" / "README.md").write_text("other notes")  # not a model file
    assert model_fingerprint(tmp_path / "a", memo) == a
    (tmp_path / "a" / "chat_template.jinja").write_text("{{ messages }}")  # the chat template changes replies
    assert model_fingerprint(tmp_path / "a", memo) != a
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "README.md").write_text("notes")
    with pytest.raises(MiddoError, match="no weight, tokenizer or config files"):
        model_fingerprint(tmp_path / "not_a_model", tmp_path / "memo.json")


def test_fingerprint_is_memoised_on_size_and_mtime(tmp_path):
    """A 16 GB model is hashed once: while no file's size or mtime changes, the memo answers."""
    folder = _model(tmp_path / "m", b"weights-1")
    memo = tmp_path / FINGERPRINTS
    real = model_fingerprint(folder, memo)
    entry = json.loads(memo.read_text())[str(folder.resolve())]
    assert entry["sha256"] == real and set(entry["files"]) == {"config.json", "tokenizer.json", "model.safetensors"}
    memo.write_text(json.dumps({str(folder.resolve()): {**entry, "sha256": "from-the-memo"}}))
    assert model_fingerprint(folder, memo) == "from-the-memo"  # not read again
    weights = folder / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"weights-2")  # same size; a new mtime is what gives it away
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert model_fingerprint(folder, memo) not in ("from-the-memo", real)


def test_local_identity_without_a_folder_falls_back_to_name_and_revision(tmp_path, caplog):
    assert local_identity("vllm", "org/model", tmp_path, "r1") == {
        "backend": "vllm",
        "model": "org/model",
        "revision": "r1",
    }
    assert "not a local folder" in caplog.text
    folder = _model(tmp_path / "m", b"w")
    assert local_identity("transformers", folder, tmp_path, "") == {
        "backend": "transformers",
        "weights": model_fingerprint(folder, tmp_path / FINGERPRINTS),
    }


def test_interrupted_run_only_makes_the_remaining_calls(tmp_path):
    cached(EchoTeacher(), tmp_path).complete(PROMPTS[:5], SAMPLING)
    inner = EchoTeacher()
    resumed = cached(inner, tmp_path)
    out = resumed.complete(PROMPTS, SAMPLING)
    assert inner.sent == PROMPTS[5:]
    assert (resumed.hits, resumed.misses) == (5, 5)
    assert out == [f"echo-1:{p}:0.0" for p in PROMPTS]


def test_chunks_are_stored_before_a_crash(tmp_path):
    class Unreachable(EchoTeacher):
        def complete(self, prompts, sampling):
            if len(self.calls) == 2:
                raise TeacherUnavailable("gone")
            return super().complete(prompts, sampling)

    with pytest.raises(TeacherUnavailable):
        cached(Unreachable(), tmp_path, chunk_size=3).complete(PROMPTS, SAMPLING)
    inner = EchoTeacher()
    cached(inner, tmp_path, chunk_size=3).complete(PROMPTS, SAMPLING)
    assert inner.sent == PROMPTS[6:]


def test_failed_calls_are_not_cached(tmp_path):
    first = cached(EchoTeacher(fail={"prompt 3"}), tmp_path)
    assert first.complete(PROMPTS, SAMPLING)[3] is None
    inner = EchoTeacher()
    out = cached(inner, tmp_path).complete(PROMPTS, SAMPLING)
    assert inner.sent == ["prompt 3"] and out[3] == "echo-1:prompt 3:0.0"


def test_repeated_prompt_is_sent_once(tmp_path):
    inner = EchoTeacher()
    teacher = cached(inner, tmp_path)
    assert teacher.complete(["a", "b", "a"], SAMPLING) == ["echo-1:a:0.0", "echo-1:b:0.0", "echo-1:a:0.0"]
    assert inner.sent == ["a", "b"] and (teacher.hits, teacher.misses) == (1, 2)


def test_unreadable_entry_is_redone(tmp_path, caplog):
    cached(EchoTeacher(), tmp_path).complete(["a"], SAMPLING)
    key = cache_key(ECHO, VERSION, "a", SAMPLING)
    (tmp_path / key[:2] / f"{key}.json").write_text('{"truncat')
    inner = EchoTeacher()
    assert cached(inner, tmp_path).complete(["a"], SAMPLING) == ["echo-1:a:0.0"]
    assert inner.sent == ["a"] and "unreadable entry" in caplog.text


KILLED_RUN = """
import sys, time
from middo.teachers import CachedTeacher, Sampling

class Slow:
    backend, model = "echo", "echo-1"
    def complete(self, prompts, sampling):
        time.sleep(0.2)
        return [f"echo-1:{p}:0.0" for p in prompts]

prompts = [f"prompt {i}" for i in range(10)]
teacher = CachedTeacher(Slow(), sys.argv[1], {"backend": "echo", "model": "echo-1"}, "v1", chunk_size=1)
teacher.complete(prompts, Sampling(max_new_tokens=16))
"""


@pytest.mark.slow
def test_sigkilled_run_resumes_from_finished_calls(tmp_path):
    """A real SIGKILL mid-run (no cleanup code runs): every finished call is reused, every stored file is whole."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(cache)])
    deadline = time.monotonic() + 60
    while len(list(cache.rglob("*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = list(cache.rglob("*.json"))
    assert 3 <= len(stored) < 10, "the run should have been killed part way"
    assert all(json.loads(Path(p).read_text())["output"].startswith("echo-1:") for p in stored)
    inner = EchoTeacher()
    resumed = cached(inner, cache)
    assert resumed.complete(PROMPTS, SAMPLING) == [f"echo-1:{p}:0.0" for p in PROMPTS]
    assert (resumed.hits, resumed.misses) == (len(stored), 10 - len(stored))
    assert len(inner.sent) == 10 - len(stored)


def test_request_settings_change_the_identity_and_empty_ones_add_nothing():
    base = server_identity("m", "http://h/v1", "")
    assert request_identity() == request_identity("", {}) == {}  # a teacher without them keeps its old keys
    identities = [
        base,
        {**base, **request_identity("You are a careful editor.")},
        {**base, **request_identity("", {"chat_template_kwargs": {"enable_thinking": False}})},
        {**base, **request_identity("", {"chat_template_kwargs": {"enable_thinking": True}})},
    ]
    assert len({cache_key(i, VERSION, "p", SAMPLING) for i in identities}) == 4
    # the extra body is canonical JSON: the order its keys were written in does not matter
    assert request_identity("", {"a": 1, "b": {"c": 2, "d": 3}}) == request_identity(
        "", {"b": {"d": 3, "c": 2}, "a": 1}
    )


def test_a_response_schema_is_a_different_request_and_none_keeps_the_old_keys():
    structured = Sampling(max_new_tokens=16, response_schema='{"type": "object"}')
    assert cache_key(ECHO, VERSION, "p", structured) != cache_key(ECHO, VERSION, "p", SAMPLING)
    # the key of a free-text call is what it was before response_schema existed: old caches still answer
    old_payload = {
        "teacher": ECHO,
        "prompt_version": VERSION,
        "prompt": "p",
        "sampling": {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 42},
    }
    blob = json.dumps(old_payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert cache_key(ECHO, VERSION, "p", SAMPLING) == hashlib.sha256(blob.encode()).hexdigest()


def test_a_response_schema_must_be_a_json_object():
    with pytest.raises(MiddoError, match="Sampling.response_schema: not JSON"):
        Sampling(response_schema="{not json")
    with pytest.raises(MiddoError, match="Sampling.response_schema: expected a JSON object"):
        Sampling(response_schema="[1, 2]")


class DrawTeacher(EchoTeacher):
    """Answers with the prompt and the seed it was asked with, as a seeded sampler's draw depends on both."""

    def complete(self, prompts, sampling):
        self.calls.append(list(prompts))
        return [f"{p}:seed {sampling.seed}" for p in prompts]


HOT = Sampling(max_new_tokens=16, temperature=1.0)


def test_a_sampled_reply_is_not_replayed_into_another_round(tmp_path):
    """Temperature > 0: the same prompt in round 2 is a new draw (a new key, a new seed), not round 1's reply."""
    first = DrawTeacher()
    round_1 = cached(first, tmp_path, round_=1).complete(["p"], HOT)
    second = DrawTeacher()
    teacher = cached(second, tmp_path, round_=2)
    round_2 = teacher.complete(["p"], HOT)
    assert (teacher.hits, teacher.misses, second.sent) == (0, 1, ["p"])
    assert round_2 != round_1
    assert cache_key(ECHO, VERSION, "p", HOT, (1, 0)) != cache_key(ECHO, VERSION, "p", HOT, (2, 0))
    assert len(list(tmp_path.glob("??/*.json"))) == 2


def test_a_rerun_of_the_same_sampled_round_hits_the_cache(tmp_path):
    """A resumed round asks the same draws (same round, same draw indices): all hits, the same replies."""
    out = cached(DrawTeacher(), tmp_path, round_=3).complete(["p", "q", "p"], HOT)
    inner = DrawTeacher()
    teacher = cached(inner, tmp_path, round_=3)
    assert teacher.complete(["p", "q", "p"], HOT) == out
    assert (teacher.hits, teacher.misses, inner.calls) == (3, 0, [])


def test_a_sampled_prompt_asked_twice_in_one_call_is_two_draws(tmp_path):
    """Two identical prompts sampled in one call (two copies of a sample) get two draws, asked with two seeds."""
    inner = DrawTeacher()
    teacher = cached(inner, tmp_path, round_=1)
    a, b = teacher.complete(["p", "p"], HOT)
    assert a != b and inner.sent == ["p", "p"] and (teacher.hits, teacher.misses) == (0, 2)


def test_greedy_replies_are_shared_across_rounds_and_keep_their_old_keys(tmp_path):
    """Temperature 0: the reply is the prompt's answer, so round 2 replays round 1's (and pre-round caches stay)."""
    out = cached(DrawTeacher(), tmp_path, round_=1).complete(["p", "p"], SAMPLING)
    inner = DrawTeacher()
    teacher = cached(inner, tmp_path, round_=2)
    assert teacher.complete(["p"], SAMPLING) == out[:1] == ["p:seed 42"]  # asked with the run's own seed
    assert (teacher.hits, teacher.misses, inner.calls) == (1, 0, [])
    assert [p.stem for p in tmp_path.glob("??/*.json")] == [cache_key(ECHO, VERSION, "p", SAMPLING)]


def test_a_cut_reply_stays_cut_in_the_cache_and_an_old_entry_reads_as_complete(tmp_path):
    """The finish reason is stored with the reply; an entry written before the field existed counts as complete."""
    from middo.teachers.base import Reply

    class Cut(EchoTeacher):
        def complete(self, prompts, sampling):
            return [Reply(f"{p} and then", "length") for p in prompts]

    cached(Cut(), tmp_path).complete(["p"], SAMPLING)
    [(reply, reason)] = [(r, r.finish_reason) for r in cached(EchoTeacher(), tmp_path).complete(["p"], SAMPLING)]
    assert (reply, reason) == ("p and then", "length")
    [path] = tmp_path.glob("??/*.json")
    entry = json.loads(path.read_text())
    del entry["finish_reason"]
    path.write_text(json.dumps(entry))
    inner = EchoTeacher()
    [old] = cached(inner, tmp_path).complete(["p"], SAMPLING)
    assert (old, old.finish_reason, inner.calls) == ("p and then", "stop", [])
