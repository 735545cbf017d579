"""The openai backend against a real `transformers serve`, a dead port, and scripted failing servers (rate limits
with Retry-After, a model that wants max_completion_tokens, structured output) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import logging
import secrets
import time

import pytest

from middo.refine.prompts import REWRITE_SCHEMA, rewrite_schema
from middo.teachers import CachedTeacher, OpenAITeacher, Sampling, TeacherUnavailable
from middo.teachers.cache import server_identity
from middo.teachers.openai_backend import retry_after

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


# ---- at scale: rate limits (Retry-After), max_completion_tokens, system prompt, extra body, structured output ----

RATE_LIMITED = (
    b'{"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}'
)
MAX_TOKENS_REFUSED = json.dumps(  # OpenAI's own words, for its newer models
    {
        "error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    }
).encode()


def test_retry_after_is_honoured(fake_server, completion):
    """429 with `Retry-After: 1` twice, then the reply: the waits are the server's, not our (tiny) backoff."""
    server = fake_server(
        lambda i, body: (429, RATE_LIMITED, {"Retry-After": "1"}) if i < 2 else (200, completion("four"))
    )
    teacher = OpenAITeacher(server.base_url, "m", max_retries=4, backoff=0.01)
    start = time.monotonic()
    assert teacher.complete(["What is 2+2?"], SAMPLING) == ["four"]
    elapsed = time.monotonic() - start
    assert len(server.posts) == 3
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert all(gap >= 1.0 for gap in gaps), gaps  # the backoff alone would have retried after ~0.01 s and ~0.02 s
    assert 2.0 <= elapsed < 5, elapsed


def test_retry_after_ms_is_preferred_to_the_backoff(fake_server, completion):
    server = fake_server(
        lambda i, body: (503, b"{}", {"retry-after-ms": "300"}) if i == 0 else (200, completion("ok"))
    )
    teacher = OpenAITeacher(server.base_url, "m", max_retries=2, backoff=5.0)  # the backoff would wait 5 s
    start = time.monotonic()
    assert teacher.complete(["q"], SAMPLING) == ["ok"]
    assert 0.3 <= time.monotonic() - start < 2.5
    assert server.times[1] - server.times[0] >= 0.3


def test_retry_after_holds_back_every_worker(fake_server, completion):
    """One 429 with Retry-After: the other workers send nothing until it has passed (they would only be refused)."""

    def respond(i, body):
        if i == 0:
            return 429, RATE_LIMITED, {"Retry-After": "1"}
        time.sleep(0.3)  # the second worker's first call is still in flight when the 429 arrives
        return 200, completion(body["messages"][-1]["content"].upper())

    server = fake_server(respond)
    teacher = OpenAITeacher(server.base_url, "m", concurrency=2, max_retries=2, backoff=0.01)
    assert teacher.complete(["a", "b", "c", "d"], SAMPLING) == ["A", "B", "C", "D"]
    assert len(server.posts) == 5
    late = [t - server.times[0] for t in server.times[2:]]  # every request but the two first ones
    assert all(t >= 1.0 for t in late), late


def test_a_retry_after_beyond_the_limit_fails_the_item_at_once(fake_server, caplog):
    server = fake_server(lambda i, body: (429, RATE_LIMITED, {"Retry-After": "3600"}))  # a spent daily quota
    teacher = OpenAITeacher(server.base_url, "m", max_retries=4, backoff=0.01)
    start = time.monotonic()
    assert teacher.complete(["q"], SAMPLING) == [None]
    assert time.monotonic() - start < 5 and len(server.posts) == 1
    assert "HTTP 429 (Retry-After over 120 s): 1" in caplog.text


def _refuses_max_tokens(completion):
    """A server for a newer OpenAI model: max_tokens is a 400, max_completion_tokens gets the prompt upper-cased."""

    def respond(i, body):
        if "max_tokens" in body:
            return 400, MAX_TOKENS_REFUSED
        assert "max_completion_tokens" in body
        return 200, completion(body["messages"][-1]["content"].upper())

    return respond


@pytest.mark.parametrize("concurrency", [1, 4])
def test_auto_switches_to_max_completion_tokens_when_the_server_asks(fake_server, completion, concurrency):
    server = fake_server(_refuses_max_tokens(completion))
    teacher = OpenAITeacher(server.base_url, "m", concurrency=concurrency, max_retries=0)
    prompts = [f"p{i}" for i in range(12)]
    assert teacher.complete(prompts, SAMPLING) == [p.upper() for p in prompts]  # nothing lost, no retry spent
    refused = [i for i, body in enumerate(server.posts) if "max_tokens" in body]
    assert 1 <= len(refused) <= concurrency  # only the first wave, sent before the server had said
    if concurrency == 1:
        assert refused == [0]
    assert len(server.posts) == len(prompts) + len(refused)
    assert all(body["max_completion_tokens"] == 8 for body in server.posts if "max_tokens" not in body)
    before = len(server.posts)
    assert teacher.complete(["later"], SAMPLING) == ["LATER"]  # the switch holds for every later request
    assert len(server.posts) == before + 1 and "max_tokens" not in server.posts[-1]


def test_explicit_token_limit_param_sends_that_field_only(fake_server, completion, caplog):
    server = fake_server(_refuses_max_tokens(completion))
    teacher = OpenAITeacher(server.base_url, "m", token_limit_param="max_completion_tokens")
    assert teacher.complete(["a"], SAMPLING) == ["A"]
    assert len(server.posts) == 1 and server.posts[0]["max_completion_tokens"] == 8
    pinned = OpenAITeacher(server.base_url, "m", token_limit_param="max_tokens", max_retries=3)
    assert pinned.complete(["b"], SAMPLING) == [None]  # pinned: the server's request is not followed
    assert len(server.posts) == 2 and "max_tokens" in server.posts[-1]
    assert "HTTP 400: Unsupported parameter: 'max_tokens'" in caplog.text  # the server's words, for the user


def test_system_prompt_and_extra_body_are_sent(fake_server, completion):
    server = fake_server(lambda i, body: (200, completion("ok")))
    extra = {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20}
    teacher = OpenAITeacher(server.base_url, "m", system_prompt="You are a careful editor.", extra_body=extra)
    assert teacher.complete(["Rewrite this."], SAMPLING) == ["ok"]
    body = server.posts[0]
    assert body["messages"] == [
        {"role": "system", "content": "You are a careful editor."},
        {"role": "user", "content": "Rewrite this."},
    ]
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["top_k"] == 20
    assert "response_format" not in body  # free text unless the sampling carries a schema


def test_a_response_schema_is_sent_as_strict_json_schema(fake_server, completion):
    server = fake_server(lambda i, body: (200, completion('{"analysis": "", "prompt": "Add 2 and 3."}')))
    teacher = OpenAITeacher(server.base_url, "m")
    structured = Sampling(max_new_tokens=8, response_schema=rewrite_schema())
    assert teacher.complete(["q"], structured) == ['{"analysis": "", "prompt": "Add 2 and 3."}']
    assert server.posts[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "rewrite", "schema": REWRITE_SCHEMA, "strict": True},
    }
    assert list(server.posts[0]["response_format"]["json_schema"]["schema"]["properties"]) == ["analysis", "prompt"]


def test_a_structured_refusal_is_counted_as_such(fake_server, caplog):
    refusal = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            }
        ],
    }
    server = fake_server(lambda i, body: (200, json.dumps(refusal).encode()))
    assert OpenAITeacher(server.base_url, "m").complete(["q"], SAMPLING) == [None]
    assert "refusal: 1" in caplog.text


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_forms(headers, expected):
    assert retry_after(headers) == expected


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after({"retry-after": when}) <= 30


def test_a_reply_cut_at_max_tokens_comes_back_marked_and_is_cached_so(fake_server, completion, tmp_path):
    """The server's finish_reason reaches the caller ("length": the reply hit max_tokens), and the cache keeps it, so
    a cut reply replayed from the cache is still known as cut and a complete one as complete."""

    def respond(i, body):
        cut = "essay" in body["messages"][-1]["content"]
        return 200, completion("The first of three parts, then", "length") if cut else completion("four")

    server = fake_server(respond)
    prompts = ["Write an essay.", "What is 2+2?"]
    identity = server_identity("m", server.base_url, "")
    first = CachedTeacher(OpenAITeacher(server.base_url, "m"), tmp_path, identity, "v1").complete(prompts, SAMPLING)
    assert first == ["The first of three parts, then", "four"]
    assert [getattr(r, "finish_reason", None) for r in first] == ["length", "stop"]
    again = CachedTeacher(OpenAITeacher(server.base_url, "m"), tmp_path, identity, "v1")
    replayed = again.complete(prompts, SAMPLING)
    assert (again.hits, again.misses, len(server.posts)) == (2, 0, 2)
    assert [(r, getattr(r, "finish_reason", None)) for r in replayed] == [(r, r.finish_reason) for r in first]
