"""A loopback OpenAI-compatible /v1/chat/completions server for escalation tests (test-only code).

Real HTTP on 127.0.0.1:<free port>; scripted replies, plain or streamed (server-sent events);
faults: HTTP 500, HTTP 401 (bad key), slow.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal


@dataclass
class ChatReply:
    content: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 200
    completion_tokens: int = 60
    fault: Literal["http500", "http401", "slow"] | None = None
    delay_s: float = 0.0


@dataclass
class _State:
    replies: deque[ChatReply] = field(default_factory=deque)
    default: ChatReply = field(default_factory=lambda: ChatReply(content="ok"))
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "big-model", "object": "model", "owned_by": "loopback"}]})
        else:
            self._json(404, {"error": {"message": "no route", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        st = self.server.state
        with st.lock:
            st.requests.append(body)
            st.auth.append(self.headers.get("Authorization", ""))
            reply = st.replies.popleft() if st.replies else st.default
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        if reply.fault == "http500":
            self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            return
        if reply.fault == "http401":
            self._json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return
        if reply.fault == "slow" or reply.delay_s:
            st.stop.wait(reply.delay_s or 30.0)
            if st.stop.is_set():
                return
        if body.get("stream"):
            self._stream(body, reply)
            return
        self._json(
            200,
            {
                "id": "chatcmpl-loopback",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model", "?"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": reply.finish_reason}
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            },
        )


    def _stream(self, body: dict[str, Any], reply: ChatReply) -> None:
        """Server-sent chunks as OpenAI sends them: the role, the content in pieces, the finish
        reason, usage when `stream_options.include_usage` asks for it, then [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": "chatcmpl-loopback", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": body.get("model", "?")}

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            self.wfile.write(f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode())
            self.wfile.flush()

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        size = max(1, len(reply.content) // 3)
        for start in range(0, len(reply.content), size):
            event([{"index": 0, "delta": {"content": reply.content[start:start + size]}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}])
        if (body.get("stream_options") or {}).get("include_usage"):
            event([], usage={"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                             "total_tokens": reply.prompt_tokens + reply.completion_tokens})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class OpenAILoopback:
    """`with OpenAILoopback() as srv:` then use `srv.base_url` (ends in /v1)."""

    def __init__(self) -> None:
        self.state = _State()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: ChatReply) -> None:
        with self.state.lock:
            self.state.replies.extend(replies)

    def __enter__(self) -> OpenAILoopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.stop.set()
        self._server.shutdown()
        self._server.server_close()
