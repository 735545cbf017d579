"""The openai backend against a real `transformers serve`, a dead port, and scripted failing servers."""

from __future__ import annotations

import logging
import secrets
import time

import pytest

from middo.teachers import CachedTeacher, OpenAITeacher, Sampling, TeacherUnavailable
from middo.teachers.cache import server_identity

SAMPLING = Sampling(max_new_tokens=8)


@pytest.mark.server
@pytest.mark.slow
def test_real_server_answers_and_cache_replays(served_model, tmp_path):
    identity = server_identity(served_model.model, served_model.base_url, "")
    teacher = CachedTeacher(
        OpenAITeacher(served_model.base_url, served_model.model, concurrency=2), tmp_path, identity, "v1"
    )
    prompts = ["What is 2+2?", "Name a colour."]
    first = teacher.complete(prompts, SAMPLING)
    assert all(isinstance(t, str) and t.strip() for t in first), first
    assert (teacher.hits, teacher.misses) == (0, 2)
    assert teacher.complete(prompts, SAMPLING) == first
    assert (teacher.hits, teacher.misses) == (2, 2)


def test_down_server_raises_unavailable_fast(dead_url):
    teacher = OpenAITeacher(dead_url, "m")  # default backoff: the probe still gives up within seconds
    start = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="cannot reach OpenAI-compatible server at " + dead_url):
        teacher.complete(["hi"], SAMPLING)
    assert time.monotonic() - start < 10


def test_retries_5xx_then_succeeds(fake_server, completion):
    server = fake_server(lambda i, body: (500, b'{"error": "busy"}') if i < 2 else (200, completion("four")))
    teacher = OpenAITeacher(server.base_url, "m", max_retries=4, backoff=0.01)
    assert teacher.complete(["What is 2+2?"], SAMPLING) == ["four"]
    assert len(server.posts) == 3
    body = server.posts[-1]
    assert body["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    sent = {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "seed")}
    assert sent == {"model": "m", "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 42}


def test_sampling_settings_are_sent(fake_server, completion):
    server = fake_server(lambda i, body: (200, completion("four")))
    teacher = OpenAITeacher(server.base_url, "m", max_retries=0)
    teacher.complete(["What is 2+2?"], Sampling(max_new_tokens=16, temperature=1.0, top_p=0.7, seed=3))
    body = server.posts[-1]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (16, 1.0, 0.7, 3)


def test_always_500_gives_none_after_retries(fake_server, caplog):
    server = fake_server(lambda i, body: (500, b"Internal Server Error"))
    teacher = OpenAITeacher(server.base_url, "m", max_retries=2, backoff=0.01)
    assert teacher.complete(["a"], SAMPLING) == [None]
    assert len(server.posts) == 3  # the first try and two retries, no more (the client's own retries are off)
    assert "HTTP 500 after 3 attempts: 1" in caplog.text


@pytest.mark.parametrize(
    "status, body, reason",
    [
        (200, b"{this is not json", "invalid JSON"),
        (200, b'{"unexpected": true}', "not a chat completion"),
        (200, None, "empty reply"),  # str / None: the assistant content of a well-formed completion
        (200, "   ", "empty reply"),
        (400, b'{"error": "bad request"}', "HTTP 400"),
    ],
)
def test_bad_replies_become_none_without_retry(fake_server, completion, caplog, status, body, reason):
    body = body if isinstance(body, bytes) else completion(body)
    server = fake_server(lambda i, _: (status, body))
    teacher = OpenAITeacher(server.base_url, "m", max_retries=3, backoff=0.01)
    assert teacher.complete(["a"], SAMPLING) == [None]
    assert len(server.posts) == 1  # retrying cannot fix these
    assert reason in caplog.text


def test_one_bad_item_does_not_spoil_the_others(fake_server, completion):
    def respond(i, body):
        prompt = body["messages"][0]["content"]
        return (200, b"garbage") if prompt == "bad" else (200, completion(prompt.upper()))

    server = fake_server(respond)
    teacher = OpenAITeacher(server.base_url, "m", concurrency=3, backoff=0.01)
    assert teacher.complete(["x", "bad", "y", "z"], SAMPLING) == ["X", None, "Y", "Z"]


def test_api_key_never_leaks(fake_server, completion, dead_url, tmp_path, monkeypatch, caplog, capfd):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("MIDDO_TEST_KEY", key)
    caplog.set_level(logging.DEBUG)  # the openai client and httpx log requests at DEBUG
    server = fake_server(lambda i, body: (200, b"nope") if "bad" in str(body) else (200, completion("ok")))
    teacher = OpenAITeacher(server.base_url, "m", api_key_env="MIDDO_TEST_KEY", backoff=0.01)
    cached = CachedTeacher(teacher, tmp_path / "cache", server_identity("m", server.base_url, ""), "v1")
    assert cached.complete(["one", "two", "bad"], SAMPLING) == ["ok", "ok", None]
    down = OpenAITeacher(dead_url, "m", api_key_env="MIDDO_TEST_KEY", backoff=0.01)
    with pytest.raises(TeacherUnavailable) as err:
        down.complete(["one"], SAMPLING)

    assert server.headers[0]["authorization"] == f"Bearer {key}"  # the key was read from the environment...
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 2
    out, errout = capfd.readouterr()
    for where, text in [("cache", "".join(p.read_text() for p in files)), ("logs", caplog.text), ("stdout", out),
                        ("stderr", errout), ("error", str(err.value)), ("repr", repr(teacher))]:  # fmt: skip
        assert key not in text, f"API key leaked into {where}"  # ...and went nowhere else


def test_unset_key_uses_placeholder(fake_server, completion, monkeypatch):
    monkeypatch.delenv("MIDDO_NO_SUCH_KEY", raising=False)
    server = fake_server(lambda i, body: (200, completion("ok")))
    assert OpenAITeacher(server.base_url, "m", api_key_env="MIDDO_NO_SUCH_KEY").complete(["a"], SAMPLING) == ["ok"]
    assert server.headers[0]["authorization"] == "Bearer EMPTY"


def test_server_gone_mid_run_stops_the_run(fake_server, completion):
    server = fake_server(lambda i, body: (200, completion("ok")))
    teacher = OpenAITeacher(server.base_url, "m", max_retries=1, backoff=0.01)
    assert teacher.complete(["a"], SAMPLING) == ["ok"]
    server.close()
    with pytest.raises(TeacherUnavailable, match=server.base_url):
        teacher.complete(["b", "c"], SAMPLING)


def test_slow_reply_times_out_then_retry_succeeds(fake_server, completion):
    def handler(i, body):
        if i == 0:
            time.sleep(1.5)  # longer than the teacher's timeout: the client gives up and retries
        return 200, completion("fast now")

    server = fake_server(handler)
    teacher = OpenAITeacher(server.base_url, "m", timeout=0.5, max_retries=2, backoff=0.01)
    assert teacher.complete(["q"], SAMPLING) == ["fast now"]
    assert len(server.posts) == 2


def test_always_slow_gives_none_after_retries(fake_server, completion, caplog):
    def handler(i, body):
        time.sleep(1.0)
        return 200, completion("too late")

    server = fake_server(handler)
    teacher = OpenAITeacher(server.base_url, "m", timeout=0.3, max_retries=1, backoff=0.01)
    start = time.monotonic()
    assert teacher.complete(["q"], SAMPLING) == [None]
    assert time.monotonic() - start < 10
    assert len(server.posts) == 2
    assert "timed out" in caplog.text.lower() or "timeout" in caplog.text.lower()
