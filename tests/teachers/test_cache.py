"""The content-addressed cache: hits replay, misses go to the teacher once, and a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middo.teachers import CachedTeacher, Sampling, TeacherUnavailable
from middo.teachers.cache import cache_key

SAMPLING = Sampling(max_new_tokens=16)
PROMPTS = [f"prompt {i}" for i in range(10)]


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
    first = CachedTeacher(EchoTeacher(), tmp_path)
    out1 = first.complete(PROMPTS, SAMPLING)
    assert (first.hits, first.misses) == (0, 10)
    inner = EchoTeacher()
    second = CachedTeacher(inner, tmp_path)
    assert second.complete(PROMPTS, SAMPLING) == out1
    assert (second.hits, second.misses, inner.calls) == (10, 0, [])


def test_layout_is_one_json_file_per_call(tmp_path):
    CachedTeacher(EchoTeacher(), tmp_path).complete(["hello"], SAMPLING)
    key = cache_key("echo", "echo-1", "hello", SAMPLING)
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry["output"] == "echo-1:hello:0.0" and entry["prompt"] == "hello" and entry["key"] == key
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]  # no temp files left


def test_key_covers_backend_model_prompt_and_sampling():
    base = cache_key("echo", "m", "p", SAMPLING)
    assert base == cache_key("echo", "m", "p", Sampling(max_new_tokens=16))
    others = [
        cache_key("openai", "m", "p", SAMPLING),
        cache_key("echo", "m2", "p", SAMPLING),
        cache_key("echo", "m", "p ", SAMPLING),
        cache_key("echo", "m", "p", Sampling(max_new_tokens=17)),
        cache_key("echo", "m", "p", Sampling(max_new_tokens=16, temperature=0.5)),
        cache_key("echo", "m", "p", Sampling(max_new_tokens=16, top_p=0.9)),
        cache_key("echo", "m", "p", Sampling(max_new_tokens=16, seed=1)),
    ]
    assert len({base, *others}) == 8


def test_interrupted_run_only_makes_the_remaining_calls(tmp_path):
    CachedTeacher(EchoTeacher(), tmp_path).complete(PROMPTS[:5], SAMPLING)
    inner = EchoTeacher()
    resumed = CachedTeacher(inner, tmp_path)
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
        CachedTeacher(Unreachable(), tmp_path, chunk_size=3).complete(PROMPTS, SAMPLING)
    inner = EchoTeacher()
    CachedTeacher(inner, tmp_path, chunk_size=3).complete(PROMPTS, SAMPLING)
    assert inner.sent == PROMPTS[6:]


def test_failed_calls_are_not_cached(tmp_path):
    first = CachedTeacher(EchoTeacher(fail={"prompt 3"}), tmp_path)
    assert first.complete(PROMPTS, SAMPLING)[3] is None
    inner = EchoTeacher()
    out = CachedTeacher(inner, tmp_path).complete(PROMPTS, SAMPLING)
    assert inner.sent == ["prompt 3"] and out[3] == "echo-1:prompt 3:0.0"


def test_repeated_prompt_is_sent_once(tmp_path):
    inner = EchoTeacher()
    cached = CachedTeacher(inner, tmp_path)
    assert cached.complete(["a", "b", "a"], SAMPLING) == ["echo-1:a:0.0", "echo-1:b:0.0", "echo-1:a:0.0"]
    assert inner.sent == ["a", "b"] and (cached.hits, cached.misses) == (1, 2)


def test_unreadable_entry_is_redone(tmp_path, caplog):
    CachedTeacher(EchoTeacher(), tmp_path).complete(["a"], SAMPLING)
    key = cache_key("echo", "echo-1", "a", SAMPLING)
    (tmp_path / key[:2] / f"{key}.json").write_text('{"truncat')
    inner = EchoTeacher()
    assert CachedTeacher(inner, tmp_path).complete(["a"], SAMPLING) == ["echo-1:a:0.0"]
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
CachedTeacher(Slow(), sys.argv[1], chunk_size=1).complete(prompts, Sampling(max_new_tokens=16))
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
    resumed = CachedTeacher(inner, cache)
    assert resumed.complete(PROMPTS, SAMPLING) == [f"echo-1:{p}:0.0" for p in PROMPTS]
    assert (resumed.hits, resumed.misses) == (len(stored), 10 - len(stored))
    assert len(inner.sent) == 10 - len(stored)
