"""Model backends behind one interface (`generate(messages, ...) -> Generation`, `BackendError`).

Each backend module imports its client library only when that backend is built, so choosing
Ollama never imports openai or llama.cpp, and `replay --help` imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.config import RuntimeSettings
from runtime.backends.base import Backend, BackendError, Generation, Messages

BackendKind = Literal["auto", "ollama", "openai", "llamacpp"]

__all__ = ["Backend", "BackendError", "BackendKind", "Generation", "Messages", "EscalationTarget", "auto_choice", "escalation_backend", "make_backend"]


def make_backend(kind: BackendKind, rt: RuntimeSettings, *, model: str | None = None) -> Backend:
    """The local backend the user asked for; `auto` = Ollama if reachable, else embedded, else advice."""
    if kind == "ollama":
        from runtime.backends.ollama_backend import OllamaBackend

        return OllamaBackend(model or rt.ollama_model, host=rt.ollama_host, num_ctx=rt.num_ctx, timeout=rt.timeout_s)
    if kind == "openai":
        from runtime.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(
            model or rt.openai_model, base_url=rt.openai_base_url, api_key_env=rt.openai_api_key_env, timeout=rt.timeout_s
        )
    if kind == "llamacpp":
        from runtime.backends.llamacpp_backend import EmbeddedPlan, LlamaCppBackend

        return LlamaCppBackend(EmbeddedPlan.from_settings(rt, model=model))
    if kind == "auto":
        return make_backend(auto_choice(rt, model=model), rt, model=model)
    raise BackendError(f"unknown backend {kind!r} (choose auto, ollama, openai or llamacpp)")


def auto_choice(rt: RuntimeSettings, *, model: str | None = None) -> Literal["ollama", "llamacpp"]:
    """What `auto` means here: Ollama when it answers within ollama_probe_timeout_s, else the
    embedded backend when installed, else an error that says what to do."""
    from runtime.backends import llamacpp_backend, ollama_backend

    if ollama_backend.reachable(rt.ollama_host, rt.ollama_probe_timeout_s):
        return "ollama"
    if llamacpp_backend.importable():
        return "llamacpp"
    where = rt.ollama_host or "OLLAMA_HOST (default http://127.0.0.1:11434)"
    raise BackendError(
        f"no local model backend: Ollama is not reachable at {where} and the embedded backend is not installed. "
        f"Start Ollama (`ollama serve`, then `ollama pull {model or rt.ollama_model}`) "
        "or install the embedded extra (`pip install 'distill[embedded]'`).",
        backend="auto",
    )


@dataclass(frozen=True)
class EscalationTarget:
    """Which bigger model a failed local answer goes to, decided from settings (nothing loaded)."""

    backend: Literal["ollama", "openai", "llamacpp"]
    model: str
    base_url: str | None  # openai only

    @classmethod
    def from_settings(cls, rt: RuntimeSettings) -> EscalationTarget:
        """[runtime] escalation_backend / escalation_model / escalation_base_url; by default the
        packaged Qwen2.5-Coder-1.5B on the embedded backend."""
        if rt.escalation_backend == "llamacpp":
            from runtime.models import ESCALATION_MODEL

            return cls("llamacpp", rt.escalation_model or ESCALATION_MODEL.key, None)
        if not rt.escalation_model:
            raise BackendError(
                f"escalation_backend = {rt.escalation_backend!r} needs a model name: set [runtime] escalation_model",
                backend=rt.escalation_backend,
            )
        base_url = (rt.escalation_base_url or rt.openai_base_url) if rt.escalation_backend == "openai" else None
        return cls(rt.escalation_backend, rt.escalation_model, base_url)


def escalation_backend(rt: RuntimeSettings) -> Backend:
    """The backend of EscalationTarget.from_settings(rt), built (the embedded one loads its model)."""
    target = EscalationTarget.from_settings(rt)
    if target.backend == "llamacpp":
        from runtime.backends.llamacpp_backend import EmbeddedPlan, LlamaCppBackend

        return LlamaCppBackend(EmbeddedPlan.from_settings(rt, escalation=True))
    if target.backend == "openai":
        from runtime.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(target.model, base_url=target.base_url, api_key_env=rt.openai_api_key_env, timeout=rt.timeout_s)
    return make_backend("ollama", rt, model=target.model)
