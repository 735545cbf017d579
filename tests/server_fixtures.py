"""Servers for teacher and refine tests: a real `transformers serve` process, and tiny scripted stdlib HTTP servers.

The real server exercises the openai backend end to end without any mock of the HTTP layer; the scripted ones make
the failure modes (5xx then success, garbage bodies) happen on demand, which a real server cannot be asked to do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    """A port nothing listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def completion() -> Callable[..., bytes]:
    """Builds a well-formed chat completion body with the given assistant content (and ``finish_reason``, ``stop``
    unless given: ``length`` is a reply cut at ``max_tokens``)."""
    return _completion


@pytest.fixture
def dead_url() -> str:
    """The API root of a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"


@dataclass
class ServedModel:
    base_url: str
    model: str
    log: Path


@pytest.fixture(scope="session")
def served_model(base_model_dir, tmp_path_factory) -> Iterator[ServedModel]:
    """`transformers serve` on 127.0.0.1, preloading the default model from its local folder, offline.

    The preloaded model's path is also the name requests must use (any other name is a 400). One thread per torch
    op pool: on a small shared CPU box oversubscribed threads make generation several times slower.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", str(base_model_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not answer within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield ServedModel(base_url=base_url, model=str(base_model_dir), log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class FakeServer:
    """What a scripted server saw: one entry per POST, with its headers and JSON body."""

    base_url: str
    posts: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)  # lower-cased names
    times: list[float] = field(default_factory=list)  # time.monotonic() at each POST's arrival
    server: ThreadingHTTPServer | None = None

    def close(self) -> None:
        """Stop listening, as a crashed server would."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


Responder = Callable[[int, dict], tuple[int, bytes] | tuple[int, bytes, dict[str, str]]]  # (status, body[, headers])


def _completion(content: str | None, finish_reason: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "cmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "fake",
            "choices": [
                {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": content}}
            ],
        }
    ).encode()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Responder], FakeServer]]:
    """Start a stdlib HTTP server whose POST replies come from ``respond(post_index, body)``; GETs list no models.

    ``respond`` returns ``(status, body)`` or ``(status, body, headers)``, e.g. ``{"Retry-After": "1"}`` on a 429.
    """
    servers: list[FakeServer] = []

    def start(respond: Responder) -> FakeServer:
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._reply(200, b'{"object": "list", "data": []}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with lock:
                    index = len(state.posts)
                    state.posts.append(body)
                    state.headers.append({k.lower(): v for k, v in self.headers.items()})
                    state.times.append(time.monotonic())
                self._reply(*respond(index, body))

            def _reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        state = FakeServer(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", server=server)
        servers.append(state)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return state

    yield start
    for state in servers:
        state.close()


@pytest.fixture
def chat_server(fake_server) -> Callable[[Callable[[str], str | None]], FakeServer]:
    """Start a scripted OpenAI-compatible server whose reply to each chat request is ``reply(last user message)``:
    a teacher that says exactly what a test needs (a refusal, junk, good tagged rewrites) over real HTTP. A reply
    given as ``(content, finish_reason)`` is sent with that finish reason (``length``: cut at ``max_tokens``)."""

    def start(reply: Callable[[str], str | None | tuple[str, str]]) -> FakeServer:
        def respond(i: int, body: dict) -> tuple[int, bytes]:
            content = reply(body["messages"][-1]["content"])
            return 200, _completion(*content) if isinstance(content, tuple) else _completion(content)

        return fake_server(respond)

    return start
