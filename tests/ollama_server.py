"""A loopback server that speaks the Ollama HTTP protocol, for the replay tests (test-only code).

Real HTTP on 127.0.0.1:<free port> (stdlib ThreadingHTTPServer), so the real `ollama` client is
exercised end to end: /api/chat (NDJSON streaming and plain JSON), /api/tags, /api/show,
/api/version. Each test scripts the replies; a reply can also be a fault: HTTP 404 (missing
model), HTTP 500, a malformed JSON body, a connection dropped mid-stream, or a reply slower than
the client's timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Fault = Literal["http404", "http500", "malformed", "drop", "slow"]


@dataclass
class Reply:
    content: str = ""
    prompt_eval_count: int | None = 120
    eval_count: int | None = 40
    done_reason: str = "stop"
    fault: Fault | None = None
    delay_s: float = 0.0
    piece_delay_s: float = 0.0  # a model writing: the wait before each streamed piece after the first


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.time)


@dataclass
class LoopbackState:
    models: list[str]
    replies: deque[Reply] = field(default_factory=deque)
    default: Reply | Callable[[dict[str, Any]], Reply] = field(default_factory=lambda: Reply(content="ok"))
    requests: list[Recorded] = field(default_factory=list)
    first_request_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            if self.replies:
                return self.replies.popleft()
        return self.default(body) if callable(self.default) else self.default


def _chunks(text: str, n: int = 3) -> list[str]:
    if not text:
        return [""]
    size = max(1, len(text) // n)
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # helpers -------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = {"_raw": raw.decode("utf-8", "replace")}
        return value if isinstance(value, dict) else {"_value": value}

    def _send(self, status: int, payload: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _record(self, body: dict[str, Any]) -> None:
        st = self.server.state
        with st.lock:
            if st.first_request_at is None:
                st.first_request_at = time.time()
            st.requests.append(Recorded(self.path, body))

    # routes --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._record({})
        st = self.server.state
        if self.path == "/api/tags":
            models = [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2026-01-01T00:00:00Z",
                    "size": 4_000_000_000,
                    "digest": f"sha256:{abs(hash(m)):064x}"[:71],
                    "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B", "quantization_level": "Q4_K_M"},
                }
                for m in st.models
            ]
            self._json(200, {"models": models})
        elif self.path == "/api/version":
            self._json(200, {"version": "0.0.0-loopback"})
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        body = self._body()
        self._record(body)
        st = self.server.state
        if self.path == "/api/show":
            name = body.get("model") or body.get("name")
            if name not in st.models:
                self._json(404, {"error": f"model '{name}' not found"})
            else:
                self._json(200, {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": {"family": "qwen2"}, "model_info": {"qwen2.context_length": 32768}})
            return
        if self.path != "/api/chat":
            self._json(404, {"error": f"no route {self.path}"})
            return
        model = body.get("model")
        reply = st.next_reply(body)
        if reply.fault == "http404" or model not in st.models:
            self._json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        if reply.fault == "http500":
            self._json(500, {"error": "llama runner process has terminated: exit status 2"})
            return
        if reply.fault == "slow" or reply.delay_s:
            st.stop.wait(reply.delay_s or 30.0)
            if st.stop.is_set():
                return
        stream = body.get("stream", True)
        final = {
            "model": model,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reply.done_reason,
            "total_duration": 1_000_000,
            "load_duration": 1000,
            "prompt_eval_count": reply.prompt_eval_count,
            "prompt_eval_duration": 1000,
            "eval_count": reply.eval_count,
            "eval_duration": 1000,
        }
        if not stream:
            if reply.fault == "malformed":
                self._send(200, b'{"model": "x", "message": {"role": "assistant", "content": "trunc')
                return
            final["message"]["content"] = reply.content
            self._json(200, final)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pieces = _chunks(reply.content)
        for i, piece in enumerate(pieces):
            if reply.fault == "malformed" and i == 1:
                self._chunk(b'{"model": "x", "message": {"content": \n')
                break
            if reply.fault == "drop" and i == 1:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # mid-stream: no final chunk, no terminator
                return
            if i and reply.piece_delay_s and st.stop.wait(reply.piece_delay_s):
                return
            part = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": piece}, "done": False}
            self._chunk(json.dumps(part).encode() + b"\n")
        else:
            self._chunk(json.dumps(final).encode() + b"\n")
        self._chunk(b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: LoopbackState


class OllamaLoopback:
    """`with OllamaLoopback(models=[...]) as srv:` then point OLLAMA_HOST / settings at `srv.url`."""

    def __init__(self, models: list[str] | None = None) -> None:
        self.state = LoopbackState(models=list(models if models is not None else ["qwen2.5:7b-instruct"]))
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply) -> None:
        with self.state.lock:
            self.state.replies.extend(replies)

    def set_default(self, reply: Reply | Callable[[dict[str, Any]], Reply]) -> None:
        self.state.default = reply

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.state.requests if r.path == "/api/chat"]

    def __enter__(self) -> OllamaLoopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.stop.set()
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":  # a standalone server for manual runs and the cold-start benchmark
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--content", default="Verify the config loader rejects num_ctx below 256.")
    args = ap.parse_args()
    srv = OllamaLoopback(models=args.model)
    srv.set_default(Reply(content=args.content))
    with srv:
        print(srv.url, flush=True)
        try:
            sys.stdin.read()
        except KeyboardInterrupt:
            pass
