"""The one interface every model backend implements, and the one error type they raise.

Callers (replay, escalation, benchmarks) see `generate(messages, ...) -> Generation` and
`BackendError`, never a client library's own exceptions, so a failed call is always a message
that can be shown and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from distill.errors import BackendError

Messages = list[dict[str, str]]
TextSink = Callable[[str], None]
"""Called with each piece of the answer as the model writes it (from the backend's thread)."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    truncated: bool
    finish_reason: str | None = None
    prompt_truncated: bool = False
    prompt_ms: float | None = None  # the model's own time reading the prompt, when the backend reports it


class Backend(Protocol):
    name: str
    model: str

    def generate(
        self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float,
        on_text: TextSink | None = None,
    ) -> Generation:
        """The whole answer; with `on_text`, each piece is also handed over as it is written."""
        ...

    def ready(self) -> None:
        """Raise BackendError now when the backend cannot answer (a dead server, a missing model),
        so a caller learns it before spending time on retrieval; cheap, cached after success."""
        ...


def prompt_chars(messages: Messages) -> int:
    return sum(len(m.get("content", "")) for m in messages)


__all__ = ["Backend", "BackendError", "Generation", "Messages", "TextSink", "prompt_chars"]
