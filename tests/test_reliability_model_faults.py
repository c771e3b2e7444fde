"""Model faults (issue 8) that tests/test_runtime_replay.py does not already cover.

That module covers Ollama down (CLI), HTTP 404 (missing model), HTTP 500, a malformed JSON body,
a stream dropped mid-reply, a reply slower than the timeout and prompt truncation. Added here,
each against the real `ollama` client through real sockets:
- a server that accepts the connection and never answers (not even /api/tags);
- a server that answers /api/tags, then sends bytes that are not HTTP at all on /api/chat;
- a stream that trickles a chunk every 0.3 s and never finishes: each read is within the read
  timeout, so only the overall deadline stops it;
- an answer cut by the output limit (done_reason "length");
- the same hung server through the `replay` CLI: exit code 2, the message, a logged run.
Each one: a clear message (or an escalation when allowed), a logged run, no hang past the timeout.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distill.config import load_settings
from distill.records.replay import ReplayRun
from distill.workspace import Workspace
from runtime.replay import ReplayOptions, ReplaySession
from tests.fixtures_reliability import MODEL, REPLAY, run_cli, write_runtime_toml
from tests.ollama_server import OllamaLoopback, Reply
from tests.openai_server import ChatReply, OpenAILoopback

TASK = "Audit provider routing in the gateway: does the router fall back when the provider times out?"
ANSWER = ("Yes: when the provider times out, the router in the gateway falls back, so provider routing keeps "
          "working.")  # supported by the task alone: there is no retrieved bundle to ground anything else
TIMEOUT_S = 2.0
SLACK_S = 2.5  # client start-up and connection set-up on a loaded 2-core machine

TAGS = json.dumps({"models": [{"name": MODEL, "model": MODEL, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                               "digest": "sha256:" + "0" * 64, "details": {"format": "gguf", "family": "qwen2"}}]})


class RawServer:
    """A TCP server on 127.0.0.1 whose behaviour per request path is scripted at the socket level."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return ""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head.split(b" ")[1].decode()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while not self.stop.is_set():
                path = self._read_request(conn)
                if not path:
                    return
                if self.mode == "silent":
                    self.stop.wait(60)
                    return
                if path == "/api/tags":
                    body = TAGS.encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                    continue
                if self.mode == "garbage":
                    conn.sendall(b"\x00\x17SSH-2.0-OpenSSH_9.6 not an http server\r\n\xff\xfe garbage\r\n\r\n")
                    conn.close()
                    return
                if self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
                    n = 0
                    while not self.stop.wait(0.3):
                        part = json.dumps({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
                                           "message": {"role": "assistant", "content": f"word{n} "}, "done": False})
                        data = part.encode() + b"\n"
                        conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        n += 1
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    return Workspace(root)


def _session(ws: Workspace, **opts: object) -> ReplaySession:
    return ReplaySession(ws, load_settings(ws.root), ReplayOptions(backend="ollama", no_retrieval=True, **opts))  # type: ignore[arg-type]


def _logged(ws: Workspace) -> list[ReplayRun]:
    return [ReplayRun.model_validate_json(line) for line in ws.replay_log.read_bytes().splitlines() if line.strip()]


@pytest.fixture(params=["silent", "garbage", "trickle"])
def raw(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    with RawServer(request.param) as srv:
        yield srv


EXPECTED = {
    "silent": "no reply from Ollama in time",
    "garbage": "Ollama",
    "trickle": f"did not finish within {TIMEOUT_S:g} s",
}


def test_socket_level_faults_end_in_a_clear_logged_error_within_the_timeout(ws: Workspace, raw: RawServer) -> None:
    write_runtime_toml(ws.root, raw.url, timeout_s=TIMEOUT_S)
    start = time.monotonic()
    run = _session(ws).run(TASK)
    elapsed = time.monotonic() - start
    assert elapsed < 2 * TIMEOUT_S + SLACK_S, elapsed  # /api/tags + /api/chat each bounded by the timeout
    assert run.final_verdict == "error" and run.final_output == ""
    (attempt,) = run.attempts
    assert EXPECTED[raw.mode] in attempt.error and raw.url in attempt.error, attempt.error
    assert "Traceback" not in attempt.error
    (row,) = _logged(ws)
    assert row.run_id == run.run_id and row.attempts[0].error == attempt.error


def test_socket_level_fault_escalates_when_allowed(ws: Workspace) -> None:
    with RawServer("garbage") as srv, OpenAILoopback() as big:
        write_runtime_toml(ws.root, srv.url, timeout_s=TIMEOUT_S,
                           extra=f'escalation_base_url = "{big.base_url}"\nescalation_backend = "openai"\n'
                                 'escalation_model = "big-model"\n')
        big.script(ChatReply(content=ANSWER))
        run = _session(ws, allow_escalation=True).run(TASK)
    assert run.escalated and run.final_verdict == "escalated_validated", run.attempts[-1]
    assert run.attempts[0].error and run.attempts[1].gate is not None and run.attempts[1].gate.passed
    assert _logged(ws)[0].final_verdict == "escalated_validated"


def test_answer_cut_by_the_output_limit_is_flagged(ws: Workspace) -> None:
    with OllamaLoopback(models=[MODEL]) as srv:
        write_runtime_toml(ws.root, srv.url, timeout_s=TIMEOUT_S)
        srv.set_default(Reply(content=ANSWER, done_reason="length", eval_count=512))
        run = _session(ws).run(TASK)
    (attempt,) = run.attempts
    assert attempt.truncated and attempt.finish_reason == "length"
    assert _logged(ws)[0].attempts[0].truncated


def test_cli_against_a_hung_server_exits_2_with_the_message_and_logs_the_run(ws: Workspace) -> None:
    with RawServer("silent") as srv:
        write_runtime_toml(ws.root, srv.url, timeout_s=TIMEOUT_S)
        start = time.monotonic()
        result = run_cli([*REPLAY, "--root", str(ws.root), "--task", TASK, "--backend", "ollama", "--no-retrieval"],
                         timeout=60)
        elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "no reply from Ollama in time" in out and "Traceback" not in out
    assert elapsed < 2 * TIMEOUT_S + 15  # interpreter start-up included
    assert _logged(ws)[0].final_verdict == "error"
