"""Fixtures for the replay runtime tests: a real indexed workspace (real MiniLM, real Chroma, real
BM25 built by index.build.run_index), loopback Ollama/OpenAI servers, settings pointing at them.

Registered for every test module by tests/conftest.py; the embedding model is fixtures_index's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from distill.config import Settings, load_settings
from distill.hashing import content_id, sha256_hex
from distill.jsonl import write_jsonl_atomic
from distill.records.common import Provenance
from distill.records.samples import RagSample
from distill.workspace import Workspace
from tests.ollama_server import OllamaLoopback
from tests.openai_server import OpenAILoopback

LOCAL_MODEL = "qwen2.5:7b-instruct"

# (title, text, success_score, source_files)
PLAYBOOKS: list[tuple[str, str, str, list[str]]] = [
    (
        "Audit provider routing in the gateway",
        "Provider routing lives in crates/gateway/src/main.rs: ProviderAdapter picks openrouter for namespaced models "
        "and falls back to the local runner.\n"
        "Verify the router falls back to openrouter when the primary provider times out.\n"
        "Check that every /v1/chat request carries the provider header.",
        "accepted",
        ["crates/gateway/src/main.rs", "crates/gateway/src/router.rs"],
    ),
    (
        "Audit circuit breaker drift against the PRD",
        "The PRD promises a circuit breaker, but crates/gateway/src/breaker.rs has no breaker class: requests retry "
        "forever.\nConfirm the breaker opens after five consecutive provider failures.",
        "accepted",
        ["crates/gateway/src/breaker.rs", "docs/PRD.md"],
    ),
    (
        "Provider routing audit missed the timeout path",
        "The routing audit covered namespaced models but not the timeout fallback in crates/gateway/src/router.rs.\n"
        "Ensure the timeout path is exercised by a test.",
        "partially_accepted",
        ["crates/gateway/src/router.rs"],
    ),
    (
        "Verify pr_audit mode is wired",
        "pr_audit mode is registered in crates/gateway/src/modes.rs and answers from lakehouse_answers_v1.\n"
        "Assert the mode appears in the mode registry.",
        "accepted",
        ["crates/gateway/src/modes.rs"],
    ),
    (
        "Speed up the monthly SQL report",
        "The report scanned orders without an index on created_at; add a composite index in db/migrations/0042_orders.sql.\n"
        "Check the query plan uses the index.",
        "accepted",
        ["db/migrations/0042_orders.sql"],
    ),
    (
        "Timezone bug in the scheduler",
        "Jobs ran an hour late after DST because scheduler/jobs.py compared naive datetimes.\n"
        "Verify a job scheduled across the DST boundary fires once.",
        "partially_accepted",
        ["scheduler/jobs.py"],
    ),
    (
        "Unreviewed note on gateway logging",
        "Logging in crates/gateway/src/log.rs might be too verbose.",
        "needs_human_review",
        ["crates/gateway/src/log.rs"],
    ),
]

ROUTING_TASK = "Audit provider routing in the gateway: does the router fall back when the provider times out?"
GROUNDED_ANSWER = (
    "Provider routing is implemented in crates/gateway/src/main.rs by ProviderAdapter. "
    "The router falls back to openrouter when the primary provider times out, and every /v1/chat request "
    "carries the provider header. The timeout fallback in crates/gateway/src/router.rs needs its own test."
)


def playbook_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (title, text, category, files) in enumerate(PLAYBOOKS):
        run_id = f"run-{i:04d}"
        sig = sha256_hex(f"{run_id}|{text}")
        sample = RagSample(
            id=content_id("rag", run_id, sig),
            title=title,
            text=text,
            success_score=category,  # type: ignore[arg-type]
            source_category="audits",
            source_run_id=run_id,
            task_id=f"task-{i}",
            validation_steps=[ln for ln in text.splitlines() if ln.split(" ")[0].lower() in {"verify", "check", "assert", "ensure", "confirm"}],
            source_files=files,
            created_at=datetime(2026, 1, 1 + i, tzinfo=UTC),
            provenance=Provenance(
                source_file="_kb/audits.jsonl",
                line_offset=i * 100,
                line_number=i + 1,
                sig_hash=sig,
                recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            ),
        )
        rows.append(sample.to_json_dict())
    return rows


@pytest.fixture(scope="session")
def indexed_root(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """A workspace with a RAG export and a real index built from it (once per session)."""
    from index.build import run_index

    root = tmp_path_factory.mktemp("replay-indexed")
    ws = Workspace(root)
    ws.kb_dir.mkdir(parents=True)
    write_jsonl_atomic(ws.rag_path, playbook_rows())
    run_index(ws, load_settings(root), embedder=embedder, progress=False)
    return root


@pytest.fixture(scope="session")
def session_searcher(indexed_root: Path, embedder: Any) -> Any:
    """The real IndexSearcher over the session index (model loaded once)."""
    from index.search import open_searcher

    return open_searcher(Workspace(indexed_root), load_settings(indexed_root), embedder=embedder)


@pytest.fixture
def ws(tmp_path: Path, indexed_root: Path) -> Workspace:
    """A private copy of the indexed workspace: each test has its own replay log."""
    target = tmp_path / "ws"
    shutil.copytree(indexed_root, target, ignore=shutil.ignore_patterns("*.lock"))
    return Workspace(target)


@pytest.fixture
def ollama_srv() -> Iterator[OllamaLoopback]:
    with OllamaLoopback(models=[LOCAL_MODEL]) as srv:
        yield srv


@pytest.fixture
def openai_srv() -> Iterator[OpenAILoopback]:
    with OpenAILoopback() as srv:
        yield srv


def write_runtime_config(root: Path, ollama_url: str, openai_url: str | None = None, *, timeout_s: float = 3.0) -> None:
    """ROOT/distill.toml pointing the runtime at the loopback servers (what a user would write)."""
    lines = ["[runtime]", f'ollama_host = "{ollama_url}"', f'ollama_model = "{LOCAL_MODEL}"', f"timeout_s = {timeout_s}"]
    if openai_url:
        lines += [f'escalation_base_url = "{openai_url}"', 'escalation_backend = "openai"', 'escalation_model = "big-model"']
    (root / "distill.toml").write_text("\n".join(lines) + "\n")


def runtime_settings(root: Path) -> Settings:
    return load_settings(root)
