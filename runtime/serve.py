"""`distill serve`: the replay loop behind an OpenAI-compatible HTTP API, loaded once.

POST /v1/chat/completions (the last user message is the task; streaming as server-sent events),
POST /v1/search, GET /healthz, GET /metrics (Prometheus text). The local model answers one request
at a time; up to `[serve] max_queue` wait, the next gets 429 with Retry-After. Every request is
logged to `_kb/replay_runs.jsonl` exactly as `replay` logs it (whole lines, written by the run
itself, so a client that disconnects cannot leave half a line). Loopback by default; a non-loopback
bind needs a bearer token read from the environment variable `[serve] api_key_env` names.

The caller is authorised before its body is read, and bodies are parsed here rather than by the
framework, so every refusal (401, 400, 413, 429, 503) has the OpenAI error shape clients parse.
A run whose answer failed the gate is returned with its verdict, or withheld (`[serve]
unvalidated_answers`); a run whose model could not be reached is a 503, never an empty answer.
A streaming request waits for the gate, or, with `[serve] stream = "live"`, gets the local model's
text as it is written and the verdict in the last chunk (such an answer is never escalated)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from distill.config import ServeSettings, Settings
from distill.errors import IndexUnavailable, RunNotLogged, UsageError
from distill.records import Category
from distill.records.common import VisibleStr, is_blank_text
from distill.records.replay import ReplayRun
from distill.workspace import Workspace
from runtime.backends.base import TextSink
from runtime.replay import ReplaySession

RETRY_AFTER_S = 5
MODEL_ID = "distill"
VALIDATED = frozenset({"validated_local", "escalated_validated"})


# ------------------------------------------------------------------------------------- requests


class ContentPart(BaseModel):
    """One part of a message's content list; a "text" part must carry its text as a string (a
    number or an object there would otherwise be answered as its Python repr)."""

    model_config = ConfigDict(extra="allow")  # image_url, input_audio...: accepted, not read
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError('a "text" part needs a "text" string')
        return self


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False  # "yes" or 1 is refused, as OpenAI refuses it
    # accepted as OpenAI defines them and not used ([runtime] decides how the local model samples,
    # so every logged run is reproducible from settings); out of OpenAI's range is still a 400
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    # what the reply cannot honour is refused rather than ignored: a client asking for two choices,
    # a JSON-shaped reply or a forced tool call would otherwise take the grounded text for one
    n: Literal[1] | None = Field(None, description="one grounded answer per task")
    response_format: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None  # `tools` are accepted: the answer is text, no tool call

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise ValueError(f"type {value.get('type')!r} is not produced: the answer is the grounded text")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_forced_tool_call(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value not in (None, "none", "auto"):
            raise ValueError("a tool call is never produced: the answer is the grounded text (use 'auto' or 'none')")
        return value


class SearchRequest(BaseModel):
    query: VisibleStr  # not blank: a blank query would answer an empty list
    k: int = Field(8, ge=1, le=100)
    mode: Literal["hybrid", "dense", "bm25", "jaccard"] | None = None
    categories: list[Category] | None = Field(None, description="keep only hits of these categories (as `distill search --category`)")


BodyT = TypeVar("BodyT", bound=BaseModel)


def task_of(messages: list[ChatMessage]) -> str:
    """The last user message's text (content parts joined)."""
    for msg in reversed(messages):
        if msg.role != "user" or msg.content is None:
            continue
        if isinstance(msg.content, str):
            return msg.content
        return "\n".join(part.text or "" for part in msg.content if part.type == "text")
    return ""


def required_key(cfg: ServeSettings, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token callers must send, or None. A named but unset variable is a usage error:
    a server that was meant to be protected must not start open."""
    if cfg.api_key_env is None:
        return None
    value = (environ if environ is not None else dict(os.environ)).get(cfg.api_key_env, "")
    if not value:
        raise UsageError(f"[serve] api_key_env names {cfg.api_key_env}, which is not set")
    return value


def check_bind(host: str, key: str | None) -> None:
    """Refuse to listen beyond loopback without a key."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and key is None:
        raise UsageError(f"refusing to bind {host} without an API key: set [serve] api_key_env (and that variable)")


def extension(run: ReplayRun) -> dict[str, Any]:
    """What the answer rests on: the `distill` field of a completion."""
    return {
        "run_id": run.run_id,
        "final_verdict": run.final_verdict,
        "escalated": run.escalated,
        "retrieved": [item.id for item in run.retrieved],
        "attempts": [
            {"backend": a.backend, "model": a.model, "escalation": a.escalation, "error": a.error,
             "gate": None if a.gate is None else {"passed": a.gate.passed,
                                                   "checks": [{"name": c.name, "passed": c.passed, "reason": c.reason} for c in a.gate.checks]}}
            for a in run.attempts
        ],
        "timings_ms": run.timings_ms,
    }


def completion(run: ReplayRun, model: str, *, withhold_unvalidated: bool = False) -> dict[str, Any]:
    """The OpenAI chat.completion for a finished run. An answer that failed the gate is withheld
    when asked (content null, finish_reason "content_filter", the text kept in the extension)."""
    usage_p = sum(a.prompt_tokens or 0 for a in run.attempts)
    usage_c = sum(a.completion_tokens or 0 for a in run.attempts)
    withheld = withhold_unvalidated and run.final_verdict not in VALIDATED
    ext = extension(run)
    if withheld:
        ext["withheld_answer"] = run.final_output
    return {
        "id": f"chatcmpl-{run.run_id}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None if withheld else run.final_output},
                     "finish_reason": "content_filter" if withheld else "stop"}],
        "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c},
        "distill": ext,
    }


def backend_errors(run: ReplayRun) -> str:
    return "; ".join(f"{a.backend}: {a.error}" for a in run.attempts if a.error) or "no model answered"


def invalid_request(exc: ValidationError) -> str:
    """A pydantic error as one line: where, and what was wrong (at most three)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


# -------------------------------------------------------------------------------------- the app


class Admission:
    """One request at the model, `max_queue` waiting; beyond that a request is turned away."""

    def __init__(self, max_queue: int) -> None:
        self.capacity = max_queue + 1
        self.inside = 0
        self.lock = asyncio.Lock()

    def try_enter(self) -> bool:
        if self.inside >= self.capacity:
            return False
        self.inside += 1
        return True

    def leave(self) -> None:
        self.inside -= 1


def create_app(session: ReplaySession, settings: Settings, key: str | None) -> FastAPI:
    """The ASGI app over one loaded session (searcher, local model, escalation model)."""
    registry = CollectorRegistry()
    requests = Counter("distill_requests", "requests by endpoint and outcome", ["endpoint", "outcome"], registry=registry)
    verdicts = Counter("distill_replay_verdicts", "replay runs by final verdict", ["verdict"], registry=registry)
    escalations = Counter("distill_escalations", "runs that went to the escalation model", registry=registry)
    gate_checks = Counter("distill_gate_attempts", "gated attempts by result", ["passed"], registry=registry)
    stage_seconds = Histogram("distill_stage_seconds", "latency by stage", ["stage"], registry=registry,
                              buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
    admission = Admission(settings.serve.max_queue)
    max_body = settings.serve.max_request_bytes
    withhold = settings.serve.unvalidated_answers == "withhold"
    app = FastAPI(title="distill", docs_url=None, redoc_url=None, openapi_url=None)

    def authorised(request: Request) -> bool:
        if key is None:
            return True
        given = request.headers.get("authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), key.encode())

    def refuse(endpoint: str, status: int, message: str, headers: dict[str, str] | None = None,
               extra: dict[str, Any] | None = None) -> JSONResponse:
        requests.labels(endpoint, str(status)).inc()
        kind = "invalid_request_error" if status in (400, 413) else "distill_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": status}}
        if extra:
            body.update(extra)
        return JSONResponse(body, status, headers=headers)

    async def parse(request: Request, endpoint: str, model: type[BodyT]) -> BodyT | JSONResponse:
        """The caller first (nothing of an unauthorised request is read), then the body: at most
        [serve] max_request_bytes, JSON, the endpoint's schema."""
        if not authorised(request):
            return refuse(endpoint, 401, "missing or wrong bearer token")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return refuse(endpoint, 413, f"request body is {declared} bytes, limit [serve] max_request_bytes={max_body}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body:
                return refuse(endpoint, 413, f"request body exceeds [serve] max_request_bytes={max_body}")
        try:
            return model.model_validate_json(bytes(raw))
        except ValidationError as exc:
            return refuse(endpoint, 400, invalid_request(exc))

    live = settings.serve.stream == "live"
    unfinished: set[asyncio.Task[ReplayRun]] = set()  # live runs whose client may have gone: held until they end

    async def run_task(task: str, on_text: TextSink | None = None) -> ReplayRun:
        async with admission.lock:  # the local model: one request at a time
            return await asyncio.to_thread(session.run, task, on_text=on_text)

    async def live_reply(task: str, model: str) -> Any:
        """A streaming request under `[serve] stream = "live"`: the local model's text is sent as it
        is written, the gate's verdict (and the run) in the last chunk. Headers wait for the first
        piece, so a model that fails before writing anything is still a 503. The run goes on to the
        end (and is logged whole) when the client disconnects; the queue slot is left when it ends."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()  # None: the run has ended

        def on_text(piece: str) -> None:  # on the model's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody reads
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        async def run_to_end() -> ReplayRun:
            try:
                run = await run_task(task, on_text)
            finally:
                admission.leave()
                pieces.put_nowait(None)  # after every piece: they were queued before the run returned
            observe(run)
            return run

        runner = asyncio.create_task(run_to_end())
        unfinished.add(runner)
        runner.add_done_callback(unfinished.discard)
        head = await pieces.get()
        if head is None:  # the run ended without a word
            return answer(await runner, model, stream=True)
        requests.labels("chat", "200").inc()
        return StreamingResponse(_live_stream(head, pieces, runner, model), media_type="text/event-stream")

    def unavailable(endpoint: str, exc: IndexUnavailable) -> JSONResponse:
        """The index could not be searched (e.g. a store a rebuild replaced before the server saw
        the new manifest): nothing was run or logged; the caller retries."""
        return refuse(endpoint, 503, f"the index could not be searched, retry: {exc}"[:500],
                      {"Retry-After": str(RETRY_AFTER_S)})

    def answer(run: ReplayRun, model: str, *, stream: bool) -> Any:
        if all(a.error is not None for a in run.attempts):
            # no model answered (unreachable, timed out; the escalation model too, when it was tried):
            # the run is logged; the caller may retry
            return refuse("chat", 503, f"the model could not answer: {backend_errors(run)}"[:500],
                          {"Retry-After": str(RETRY_AFTER_S)}, {"distill": extension(run)})
        requests.labels("chat", "200").inc()
        payload = completion(run, model, withhold_unvalidated=withhold)
        if not stream:
            return payload
        return StreamingResponse(_stream(payload), media_type="text/event-stream")

    def observe(run: ReplayRun) -> None:
        verdicts.labels(run.final_verdict).inc()
        if run.escalated:
            escalations.inc()
        for attempt in run.attempts:
            if attempt.gate is not None:
                gate_checks.labels(str(attempt.gate.passed).lower()).inc()
        for stage, ms in run.timings_ms.items():
            stage_seconds.labels(stage).observe(ms / 1000)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        """Open to probes (no token needed); where the workspace lives is told to authorised callers only."""
        state: dict[str, Any] = {"status": "ok", "queued": max(0, admission.inside - 1), "capacity": admission.capacity}
        if authorised(request):
            state["workspace"] = str(session.ws.root)
        return state

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        """Agent frameworks list models before they call one; any model name is accepted."""
        if not authorised(request):
            return refuse("models", 401, "missing or wrong bearer token")
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "distill"}]}

    @app.post("/v1/search")
    async def search(request: Request) -> Any:
        body = await parse(request, "search", SearchRequest)
        if isinstance(body, JSONResponse):
            return body
        t0 = time.perf_counter()
        try:
            hits = await asyncio.to_thread(session.search, body.query, k=body.k, mode=body.mode or session.options.mode,
                                            categories=[c.value for c in body.categories] if body.categories else None)
        except IndexUnavailable as exc:
            return unavailable("search", exc)
        stage_seconds.labels("search").observe(time.perf_counter() - t0)
        requests.labels("search", "200").inc()
        return {"object": "list", "data": [h.model_dump(mode="json") for h in hits]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await parse(request, "chat", ChatRequest)
        if isinstance(body, JSONResponse):
            return body
        task = task_of(body.messages)
        if is_blank_text(task):
            return refuse("chat", 400, "no user message with text: the last user message is the task")
        if not admission.try_enter():
            return refuse("chat", 429, f"the local model is busy and {settings.serve.max_queue} requests are waiting",
                          {"Retry-After": str(RETRY_AFTER_S)})
        try:
            if body.stream and live:
                return await live_reply(task, body.model or MODEL_ID)
            try:
                run = await run_task(task)
            finally:
                admission.leave()
        except IndexUnavailable as exc:
            return unavailable("chat", exc)
        except RunNotLogged as exc:
            return refuse("chat", 503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})
        observe(run)
        return answer(run, body.model or MODEL_ID, stream=body.stream)

    return app


def _chunk_event(base: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None,
                 **extra: Any) -> bytes:
    """One chat.completion.chunk as a server-sent event."""
    chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def _stream(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """The finished answer as OpenAI chat.completion.chunk events (gated streaming: the gate judges
    whole answers, so nothing is sent before it has)."""
    base = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"], "model": payload["model"]}
    choice = payload["choices"][0]
    text = choice["message"]["content"] or ""  # null when the answer is withheld
    yield _chunk_event(base, {"role": "assistant", "content": ""})
    for start in range(0, len(text), 200):
        yield _chunk_event(base, {"content": text[start:start + 200]})
    yield _chunk_event(base, {}, choice["finish_reason"], distill=payload["distill"], usage=payload["usage"])
    yield b"data: [DONE]\n\n"


def _error_event(message: str, **extra: Any) -> bytes:
    """An error event in a stream that already began (the openai client raises it)."""
    error = {"message": message[:500], "type": "distill_error", "code": 503}
    return f"data: {json.dumps({'error': error, **extra})}\n\n".encode()


async def _live_stream(head: str, pieces: asyncio.Queue[str | None], runner: asyncio.Task[ReplayRun],
                       model: str) -> AsyncIterator[bytes]:
    """The local model's text as chunks while it writes, then the run: a last chunk with the gate's
    verdict in the `distill` field, or, when the model failed after it began, an error event (the
    openai client raises it) rather than a truncated answer that looks finished."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    yield _chunk_event(base, {"role": "assistant", "content": ""})
    piece: str | None = head
    while piece is not None:
        yield _chunk_event(base, {"content": piece})
        piece = await pieces.get()
    try:
        run = await runner
    except RunNotLogged as exc:  # the text was sent, the run was not kept: not a finished answer
        yield _error_event(str(exc))
        yield b"data: [DONE]\n\n"
        return
    local = run.attempts[0]
    if local.error is not None:
        yield _error_event(f"the model failed mid-answer: {local.error}", distill=extension(run))
    else:
        payload = completion(run, model)
        yield _chunk_event(base, {}, payload["choices"][0]["finish_reason"], distill=payload["distill"],
                           usage=payload["usage"])
    yield b"data: [DONE]\n\n"


def open_session(root: Any, settings: Settings, session_factory: Callable[..., ReplaySession] | None = None) -> ReplaySession:
    """The session the server answers with, on the settings it was given (not read again: the
    caller's are the ones checked, and the environment may hold no others)."""
    from runtime.replay import ReplayOptions

    ws = Workspace.resolve(root)
    opts = ReplayOptions.from_settings(settings.runtime, allow_escalation=settings.serve.allow_escalation or None,
                                       local_only=not settings.serve.allow_escalation or None)
    return (session_factory or ReplaySession)(ws, settings, opts)
