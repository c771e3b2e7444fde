"""Ollama through the official `ollama` client.

The host comes from settings, else the client reads OLLAMA_HOST itself. Every request has a
timeout (per read, plus an overall deadline checked while streaming), `num_ctx` is always sent
(Ollama's default window silently truncates long prompts), and the model list is checked once per
backend so a missing model is an error that names `ollama pull`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from runtime.backends.base import BackendError, Generation, Messages, TextSink, prompt_chars

PROMPT_TRUNCATION_MARGIN = 8
"""prompt_eval_count within this many tokens of num_ctx means Ollama cut the prompt."""


def _names(listing: Any) -> set[str]:
    names: set[str] = set()
    for m in getattr(listing, "models", None) or []:
        name = getattr(m, "model", None) or getattr(m, "name", None)
        if name:
            names.add(name)
            if name.endswith(":latest"):
                names.add(name.removesuffix(":latest"))
    return names


def describe(exc: BaseException) -> str:
    """One line for any failure the client can raise (HTTP, connection, timeout, bad JSON)."""
    import httpx
    import ollama

    if isinstance(exc, ollama.ResponseError):
        return f"Ollama answered with an error: {exc.error} (HTTP {exc.status_code})"
    if isinstance(exc, httpx.TimeoutException):
        return f"no reply from Ollama in time ({type(exc).__name__})"
    if isinstance(exc, ConnectionError | httpx.ConnectError):
        return "cannot connect to Ollama (is `ollama serve` running? set OLLAMA_HOST if it listens elsewhere)"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return f"the connection to Ollama broke mid-reply ({type(exc).__name__}: {exc})"
    if isinstance(exc, json.JSONDecodeError | ValueError):
        return f"Ollama sent a reply that is not valid JSON ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


class OllamaBackend:
    name = "ollama"

    def __init__(self, model: str, *, host: str | None = None, num_ctx: int = 4096, timeout: float = 120.0) -> None:
        self.model = model
        self.num_ctx = num_ctx
        self.timeout = timeout
        try:
            import ollama  # the package builds a default client from OLLAMA_HOST at import

            self.client = ollama.Client(host=host, timeout=timeout)
            self.host = str(self.client._client.base_url)
        except ValueError as exc:  # an unparsable host or port, from settings or OLLAMA_HOST
            import os

            where = repr(host) if host else f"{os.environ.get('OLLAMA_HOST', '')!r} (OLLAMA_HOST)"
            raise BackendError(f"Ollama host {where} is not a usable URL: {exc}", backend=self.name, model=model) from exc
        self._model_checked = False

    def _err(self, message: str) -> BackendError:
        return BackendError(message, backend=self.name, model=self.model)

    def _missing(self) -> BackendError:
        return self._err(
            f"model {self.model!r} is not available on Ollama at {self.host}: run `ollama pull {self.model}`"
        )

    def ready(self) -> None:
        self.ensure_model()

    def ensure_model(self) -> None:
        """/api/tags once per backend: a missing model fails before any prompt is sent."""
        if self._model_checked:
            return
        try:
            listing = self.client.list()
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one BackendError
            raise self._err(f"{describe(exc)} [host {self.host}]") from exc
        if self.model not in _names(listing):
            raise self._missing()
        self._model_checked = True

    def generate(self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float,
                 on_text: TextSink | None = None) -> Generation:
        import ollama

        self.ensure_model()
        options = {"num_ctx": self.num_ctx, "num_predict": max_tokens, "temperature": temperature}
        start = time.perf_counter()
        deadline = start + timeout
        parts: list[str] = []
        final: Any = None
        try:
            stream = self.client.chat(model=self.model, messages=messages, stream=True, options=options)
            for chunk in stream:
                if chunk.message is not None and chunk.message.content:
                    parts.append(chunk.message.content)
                    if on_text is not None:
                        on_text(chunk.message.content)
                if chunk.done:
                    final = chunk
                if time.perf_counter() > deadline:
                    raise self._err(f"Ollama did not finish within {timeout:g} s [host {self.host}]")
        except BackendError:
            raise
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise self._missing() from exc
            raise self._err(f"{describe(exc)} [host {self.host}]") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._err(f"{describe(exc)} [host {self.host}]") from exc
        latency = (time.perf_counter() - start) * 1000
        if final is None:
            raise self._err(f"the reply from Ollama ended before it was complete [host {self.host}]")
        pec = final.prompt_eval_count
        est_tokens = prompt_chars(messages) // 4
        prompt_truncated = (pec is not None and pec >= self.num_ctx - PROMPT_TRUNCATION_MARGIN) or est_tokens > self.num_ctx
        finish = final.done_reason
        return Generation(
            text="".join(parts),
            prompt_tokens=pec,
            completion_tokens=final.eval_count,
            latency_ms=latency,
            truncated=prompt_truncated or finish == "length",
            finish_reason=finish,
            prompt_truncated=prompt_truncated,
            prompt_ms=None if final.prompt_eval_duration is None else final.prompt_eval_duration / 1e6,
        )


def reachable(host: str | None, timeout: float) -> bool:
    """A quick liveness probe for `auto` (GET /api/tags with a short timeout)."""
    try:
        import ollama  # a malformed OLLAMA_HOST fails here already

        ollama.Client(host=host, timeout=timeout).list()
        return True
    except Exception:  # noqa: BLE001 - unreachable for any reason means "not this backend"
        return False
