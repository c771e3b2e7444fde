"""Any OpenAI-compatible chat server (llama.cpp server, vLLM, OpenRouter, OpenAI) via the `openai` client.

Also the usual escalation target. The API key is read from the environment variable named in
settings; a local server without auth gets a dummy key, a hosted endpoint without one is an error
that names the variable.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runtime.backends.base import BackendError, Generation, Messages, TextSink

LOCAL_DUMMY_KEY = "sk-no-key-required"


def describe(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "no reply from the OpenAI-compatible server in time"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot connect to the OpenAI-compatible server ({exc})"
    if isinstance(exc, openai.AuthenticationError):
        return f"the server refused the API key (HTTP {exc.status_code})"
    if isinstance(exc, openai.APIStatusError):
        return f"the server answered HTTP {exc.status_code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 0,
    ) -> None:
        import openai

        self.model = model
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise BackendError(
                    f"no API key: set {api_key_env} (or point runtime.openai_base_url at a local server)",
                    backend=self.name,
                    model=model,
                )
            key = LOCAL_DUMMY_KEY
        self.base_url = base_url or "https://api.openai.com/v1"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)

    def ready(self) -> None:
        """Nothing cheap to ask an OpenAI-compatible server before the call itself."""

    def generate(self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float,
                 on_text: TextSink | None = None) -> Generation:
        start = time.perf_counter()
        request: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                   "temperature": temperature, "timeout": timeout}
        if on_text is not None:
            return self._stream(request, on_text=on_text, start=start)
        try:
            resp = self.client.chat.completions.create(**request)
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one BackendError
            raise self._failed(exc) from exc
        latency = (time.perf_counter() - start) * 1000
        if not resp.choices:
            raise BackendError(f"the server returned no choices [{self.base_url}]", backend=self.name, model=self.model)
        choice = resp.choices[0]
        usage = resp.usage
        finish = choice.finish_reason
        return Generation(
            text=(choice.message.content or "") if choice.message else "",
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency,
            truncated=finish == "length",
            finish_reason=finish,
        )

    def _failed(self, exc: BaseException) -> BackendError:
        return BackendError(f"{describe(exc)} [{self.base_url}, model {self.model}]", backend=self.name, model=self.model)

    def _stream(self, request: dict[str, Any], *, on_text: TextSink, start: float) -> Generation:
        """The answer as server-sent chunks, each piece handed on as it comes; usage from the last
        chunk when the server sends it (`stream_options.include_usage`), else unknown."""
        parts: list[str] = []
        finish: str | None = None
        usage = None
        timeout = request["timeout"]
        deadline = start + timeout
        try:
            stream = self.client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                        on_text(choice.delta.content)
                    finish = choice.finish_reason or finish
                if time.perf_counter() > deadline:
                    raise BackendError(f"no whole reply within {timeout:g} s [{self.base_url}, model {self.model}]",
                                       backend=self.name, model=self.model)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one BackendError
            raise self._failed(exc) from exc
        if finish is None:
            raise BackendError(f"the streamed reply ended before it was complete [{self.base_url}]",
                               backend=self.name, model=self.model)
        return Generation(
            text="".join(parts),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=(time.perf_counter() - start) * 1000,
            truncated=finish == "length",
            finish_reason=finish,
        )
