"""Any OpenAI-compatible chat server (llama.cpp server, vLLM, OpenRouter, OpenAI) via the `openai` client.

Also the usual escalation target. The API key is read from the environment variable named in
settings; a local server without auth gets a dummy key, a hosted endpoint without one is an error
that names the variable.
"""

from __future__ import annotations

import os
import time

from runtime.backends.base import BackendError, Generation, Messages

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

    def generate(self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float) -> Generation:
        start = time.perf_counter()
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one BackendError
            raise BackendError(f"{describe(exc)} [{self.base_url}, model {self.model}]", backend=self.name, model=self.model) from exc
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
