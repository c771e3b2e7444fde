"""Backend selection and the OpenAI-compatible backend as a local backend (real clients, loopback servers)."""

from __future__ import annotations

import socket

import pytest

from distill.config import RuntimeSettings
from runtime.backends import BackendError, make_backend
from runtime.backends import llamacpp_backend
from runtime.backends.ollama_backend import OllamaBackend
from runtime.backends.openai_backend import OpenAIBackend
from tests.fixtures_runtime import LOCAL_MODEL
from tests.ollama_server import OllamaLoopback, Reply
from tests.openai_server import ChatReply, OpenAILoopback

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_auto_picks_ollama_when_reachable() -> None:
    with OllamaLoopback(models=[LOCAL_MODEL]) as srv:
        srv.set_default(Reply(content="hello", prompt_eval_count=12, eval_count=2))
        backend = make_backend("auto", RuntimeSettings(ollama_host=srv.url))
        assert isinstance(backend, OllamaBackend) and backend.model == LOCAL_MODEL
        gen = backend.generate(MESSAGES, max_tokens=8, temperature=0.0, timeout=5)
        assert (gen.text, gen.prompt_tokens, gen.completion_tokens) == ("hello", 12, 2)
        # /api/tags is checked once per backend instance, not per call
        backend.generate(MESSAGES, max_tokens=8, temperature=0.0, timeout=5)
        tags = [r for r in srv.state.requests if r.path == "/api/tags"]
        assert len(tags) == 2  # one for the `auto` probe, one for the backend's model check


def test_streamed_answers_reach_the_caller_piece_by_piece() -> None:
    """`on_text` (a live `distill serve` stream) gets the answer as it arrives from Ollama and from
    an OpenAI-compatible server; the Generation is the same as a plain call's."""
    with OllamaLoopback(models=[LOCAL_MODEL]) as srv:
        srv.set_default(Reply(content="hello there, world", prompt_eval_count=12, eval_count=4))
        backend = OllamaBackend(LOCAL_MODEL, host=srv.url)
        pieces: list[str] = []
        gen = backend.generate(MESSAGES, max_tokens=8, temperature=0.0, timeout=5, on_text=pieces.append)
        assert len(pieces) > 1 and "".join(pieces) == gen.text == "hello there, world"
        assert (gen.prompt_tokens, gen.completion_tokens) == (12, 4) and gen.prompt_ms is not None
    with OpenAILoopback() as oai:
        oai.script(ChatReply(content="hello there, world", prompt_tokens=9, completion_tokens=4, finish_reason="length"),
                   ChatReply(content="hello there, world", prompt_tokens=9, completion_tokens=4, finish_reason="length"))
        backend = make_backend("openai", RuntimeSettings(openai_base_url=oai.base_url), model="local-llama")
        pieces = []
        streamed = backend.generate(MESSAGES, max_tokens=4, temperature=0.0, timeout=5, on_text=pieces.append)
        plain = backend.generate(MESSAGES, max_tokens=4, temperature=0.0, timeout=5)
        assert len(pieces) > 1 and "".join(pieces) == streamed.text
        assert (streamed.text, streamed.prompt_tokens, streamed.completion_tokens, streamed.truncated) == \
            (plain.text, plain.prompt_tokens, plain.completion_tokens, plain.truncated) == ("hello there, world", 9, 4, True)
        assert oai.state.requests[0]["stream"] is True and oai.state.requests[0]["stream_options"] == {"include_usage": True}
        assert "stream" not in oai.state.requests[1]


def test_auto_says_what_to_do_when_nothing_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp_backend, "importable", lambda: False)  # as if the [embedded] extra were absent
    url = closed_port_url()
    with pytest.raises(BackendError) as info:
        make_backend("auto", RuntimeSettings(ollama_host=url, ollama_probe_timeout_s=0.5))
    message = str(info.value)
    assert url in message and "ollama serve" in message and f"ollama pull {LOCAL_MODEL}" in message
    assert "pip install 'distill[embedded]'" in message
    assert info.value.exit_code == 2


def test_openai_compatible_server_as_the_local_backend() -> None:
    with OpenAILoopback() as srv:
        srv.script(ChatReply(content="hello", prompt_tokens=9, completion_tokens=1, finish_reason="length"))
        backend = make_backend("openai", RuntimeSettings(openai_base_url=srv.base_url), model="local-llama")
        assert isinstance(backend, OpenAIBackend)
        gen = backend.generate(MESSAGES, max_tokens=1, temperature=0.0, timeout=5)
        assert gen.text == "hello" and gen.truncated and gen.finish_reason == "length"
        assert srv.state.requests[0]["model"] == "local-llama" and srv.state.requests[0]["max_tokens"] == 1
        assert srv.state.auth[0] == "Bearer sk-no-key-required"


def test_openai_key_comes_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "sk-test-123")
    with OpenAILoopback() as srv:
        srv.script(ChatReply(content="hi"))
        backend = OpenAIBackend("m", base_url=srv.base_url, api_key_env="MY_LLM_KEY", timeout=5)
        backend.generate(MESSAGES, max_tokens=4, temperature=0.0, timeout=5)
        assert srv.state.auth == ["Bearer sk-test-123"]


def test_openai_hosted_endpoint_without_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(BackendError, match="set NO_SUCH_KEY_VAR"):
        OpenAIBackend("gpt-4o", base_url=None, api_key_env="NO_SUCH_KEY_VAR")


@pytest.mark.parametrize(("reply", "message"), [(ChatReply(fault="http500"), "HTTP 500"), (ChatReply(fault="http401"), "refused the API key"), (ChatReply(fault="slow", delay_s=10), "in time")])
def test_openai_faults_are_backend_errors(reply: ChatReply, message: str) -> None:
    with OpenAILoopback() as srv:
        srv.script(reply)
        backend = OpenAIBackend("m", base_url=srv.base_url, timeout=1.0)
        with pytest.raises(BackendError, match=message):
            backend.generate(MESSAGES, max_tokens=4, temperature=0.0, timeout=1.0)


def test_openai_unreachable_server() -> None:
    backend = OpenAIBackend("m", base_url=closed_port_url() + "/v1", timeout=2)
    with pytest.raises(BackendError, match="cannot connect"):
        backend.generate(MESSAGES, max_tokens=4, temperature=0.0, timeout=2)
