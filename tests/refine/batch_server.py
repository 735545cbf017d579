"""A scripted OpenAI Batch API server on 127.0.0.1: files upload, batch create and retrieve, file content.

It speaks the shapes the openai client and the API reference use (``POST /v1/files`` multipart with
``purpose=batch``, ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``; output lines
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``) and answers each request line
with the same reply function as the scripted chat teacher (:func:`scripted_teacher.script`), so a batch round and an
online round can be compared. A reply of ``None`` becomes an error-file line (HTTP 400, as the API reports a
request it refused); a batch's statuses follow a script per batch, and an ``expired`` one leaves its unprocessed
lines in the error file with code ``batch_expired``.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class BatchPlan:
    """How one batch behaves: ``statuses`` are what successive GETs report (the last one repeats); an ended
    ``expired`` batch processed only its first ``processed`` lines."""

    statuses: tuple[str, ...] = ("in_progress", "completed")
    processed: int = 0


@dataclass
class BatchServer:
    """What the server saw, for the tests to count: every uploaded input file's lines, every GET."""

    base_url: str
    uploads: list[list[dict]] = field(default_factory=list)
    batches: dict[str, dict] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)  # paths, in order
    files: dict[str, bytes] = field(default_factory=dict)
    hold_download: float = 0.0  # seconds the next output download waits before answering (to kill a run in it)
    server: ThreadingHTTPServer | None = None

    @property
    def received(self) -> list[str]:
        """The ``custom_id`` of every request line uploaded, in order (a resent request shows twice)."""
        return [line["custom_id"] for lines in self.uploads for line in lines]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _completion(content: str, prompt: str) -> dict:
    return {
        "id": "chatcmpl-batch",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(content.split()),
            "total_tokens": len(prompt.split()) + len(content.split()),
        },
    }


def _result(line: dict, reply: Callable[[str], str | None], reached: bool) -> tuple[str, dict]:
    """``("output" | "errors", result line)`` for one input line."""
    cid = line["custom_id"]
    if not reached:
        error = {"code": "batch_expired", "message": "This request could not be executed before the window expired."}
        return "errors", {"id": f"batch_req_{cid[:8]}", "custom_id": cid, "response": None, "error": error}
    prompt = line["body"]["messages"][-1]["content"]
    content = reply(prompt)
    if content is None:
        body = {"error": {"message": "refused", "type": "invalid_request_error", "param": None, "code": "refused"}}
        response = {"status_code": 400, "request_id": "req_x", "body": body}
        return "errors", {"id": f"batch_req_{cid[:8]}", "custom_id": cid, "response": response, "error": None}
    response = {"status_code": 200, "request_id": "req_x", "body": _completion(content, prompt)}
    return "output", {"id": f"batch_req_{cid[:8]}", "custom_id": cid, "response": response, "error": None}


def start(reply: Callable[[str], str | None], plans: list[BatchPlan] | None = None) -> BatchServer:
    """Serve in a daemon thread; the n-th batch created follows ``plans[n]`` (default: in progress, then done)."""
    plans = list(plans or [])
    lock = threading.Lock()

    def batch_json(b: dict) -> dict:
        keys = ("id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at")
        out = {k: b[k] for k in keys}
        out |= {"output_file_id": b.get("output_file_id"), "error_file_id": b.get("error_file_id")}
        out["request_counts"] = b["request_counts"]
        return out

    def advance(b: dict) -> None:
        """The batch's next status; on reaching an end, write its output and error files."""
        plan: BatchPlan = b["plan"]
        status = plan.statuses[min(b["polls"], len(plan.statuses) - 1)]
        b["polls"] += 1
        b["status"] = status
        if status not in ("completed", "expired") or b.get("ended"):
            return
        lines = state.uploads[b["upload"]]
        files: dict[str, list[str]] = {"output": [], "errors": []}
        for i, line in enumerate(lines):
            kind, result = _result(line, reply, status == "completed" or i < plan.processed)
            files[kind].append(json.dumps(result))
        for kind, rows in files.items():
            if rows:
                fid = f"file-{kind}-{b['id']}"
                state.files[fid] = ("\n".join(rows) + "\n").encode()
                b["output_file_id" if kind == "output" else "error_file_id"] = fid
        b["request_counts"] = {"total": len(lines), "completed": len(files["output"]), "failed": len(files["errors"])}
        b["ended"] = True

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                if self.path == "/v1/files":
                    return self._reply(200, self._upload(raw))
                if self.path == "/v1/batches":
                    body = json.loads(raw)
                    assert body["endpoint"] == "/v1/chat/completions" and body["completion_window"] == "24h", body
                    n = len(state.batches)
                    bid = f"batch_{n + 1}"
                    b = {
                        "id": bid,
                        "object": "batch",
                        "endpoint": body["endpoint"],
                        "input_file_id": body["input_file_id"],
                        "completion_window": "24h",
                        "status": "validating",
                        "created_at": int(time.time()),
                        "request_counts": {"total": 0, "completed": 0, "failed": 0},
                        "upload": int(body["input_file_id"].split("-")[-1]),
                        "plan": plans[n] if n < len(plans) else BatchPlan(),
                        "polls": 0,
                    }
                    state.batches[bid] = b
                    return self._reply(200, batch_json(b))
            self._reply(404, {"error": {"message": f"no route {self.path}"}})

        def do_GET(self):
            with lock:
                state.gets.append(self.path)
                parts = self.path.strip("/").split("/")  # v1, batches|files, id[, content]
                if parts[1:2] == ["batches"] and parts[2] in state.batches:
                    b = state.batches[parts[2]]
                    advance(b)
                    return self._reply(200, batch_json(b))
                content = state.files.get(parts[2]) if parts[1:2] == ["files"] and parts[3:] == ["content"] else None
                hold, state.hold_download = state.hold_download, 0.0
            if content is None:
                return self._reply(404, {"error": {"message": f"no route {self.path}"}})
            time.sleep(hold)
            self._reply(200, content, "application/octet-stream")

        def _upload(self, raw: bytes) -> dict:
            head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
            fields = {p.get_param("name", header="content-disposition"): p for p in form.iter_parts()}
            assert fields["purpose"].get_payload(decode=True) == b"batch", "an input file must have purpose=batch"
            data = fields["file"].get_payload(decode=True)
            state.uploads.append([json.loads(line) for line in data.decode().splitlines()])
            fid = f"file-input-{len(state.uploads) - 1}"
            state.files[fid] = data
            name = fields["file"].get_param("filename", header="content-disposition")
            return {
                "id": fid,
                "object": "file",
                "bytes": len(data),
                "created_at": 0,
                "filename": name,
                "purpose": "batch",
            }

        def _reply(self, status: int, payload, ctype: str = "application/json"):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = BatchServer(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", server=server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return state
