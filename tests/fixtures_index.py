"""Fixtures for the index tests: one real embedding model per session, small RAG exports, a Chroma server.

Registered for every test module by tests/conftest.py: ask for a fixture by its parameter name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from distill.hashing import content_id, sha256_hex
from distill.jsonl import write_jsonl_atomic
from distill.records.common import Provenance
from distill.records.samples import RagSample

TOPICS = [
    ("Fix flaky migration test", "The migration test failed because the fixture database kept rows between runs. "
     "Reset the schema before each test.\nVerify the migration runs twice without errors.\nCheck that rollback leaves no tables."),
    ("Rotate leaked API credentials", "Credentials were found in the deploy script. Move them to the secret store and "
     "rotate the keys.\nEnsure the old key is revoked.\nConfirm the pipeline reads from the vault."),
    ("Speed up slow SQL report", "The monthly report scanned the orders table without an index on created_at. "
     "Add a composite index and rewrite the join.\nCheck the query plan uses the index."),
    ("Handle null pointer in parser", "The JSON parser dereferenced a missing optional field. Guard the access and "
     "return a typed error.\nAssert the parser rejects truncated input."),
    ("Upgrade TLS configuration", "The load balancer still allowed TLS 1.0. Restrict to TLS 1.2+ and modern ciphers.\n"
     "Verify with an external scanner that weak suites are gone."),
    ("Reduce Docker image size", "The image shipped build tools. Use a multi-stage build and a slim base image.\n"
     "Check the final image is under 200 MB."),
    ("Fix race in cache invalidation", "Two workers invalidated and repopulated the cache concurrently, serving stale "
     "entries. Use a versioned key with compare-and-set.\nEnsure concurrent writers never interleave."),
    ("Paginate the audit log API", "The audit endpoint returned every row at once and timed out. Add cursor pagination.\n"
     "Confirm the last page has no next cursor."),
    ("Repair broken CSV export", "Commas inside quoted fields split columns. Use the csv module's writer with "
     "quoting.\nVerify a round trip of a field containing commas and quotes."),
    ("Add retry with backoff to webhook sender", "Webhook deliveries failed permanently on transient 503s. Retry with "
     "exponential backoff and jitter.\nCheck the retry stops after five attempts."),
    ("Memory leak in image resizer", "Decoded frames were kept in a module-level list. Release buffers after each "
     "request.\nAssert resident memory is flat over 1000 requests."),
    ("Timezone bug in scheduler", "Jobs ran an hour late after the DST change because naive datetimes were compared. "
     "Store UTC everywhere.\nVerify a job scheduled across the DST boundary fires once."),
]
CATEGORIES = ["accepted", "partially_accepted", "needs_human_review"]


def rag_row(i: int, *, title: str | None = None, text: str | None = None, category: str | None = None) -> dict:
    """A valid RagSample row (real record model, real validation)."""
    t, body = TOPICS[i % len(TOPICS)]
    title = title or (t if i < len(TOPICS) else f"{t} (case {i})")
    text = text or body
    run_id = f"run-{i:04d}"
    sig = sha256_hex(f"{run_id}|{text}")
    sample = RagSample(
        id=content_id("rag", run_id, sig),
        title=title,
        text=text,
        success_score=category or CATEGORIES[i % len(CATEGORIES)],  # type: ignore[arg-type]
        source_category="scrum_reviews" if i % 2 else "audits",
        source_run_id=run_id,
        task_id=f"task-{i % 5}",
        tags=["sample"],
        validation_steps=[line for line in text.splitlines() if line.split(" ")[0].lower() in {"verify", "check", "assert", "ensure", "confirm"}],
        created_at=datetime(2026, 1, 1 + (i % 28), tzinfo=UTC),
        provenance=Provenance(
            source_file="_kb/scrum_reviews.jsonl", line_offset=i * 100, line_number=i + 1, sig_hash=sig,
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    )
    return sample.to_json_dict()


def write_export(root: Path, rows: list[dict]) -> Path:
    path = root / "exports" / "rag" / "playbooks.jsonl"
    write_jsonl_atomic(path, rows)
    return path


@pytest.fixture(scope="session")
def embedder():
    """The packaged MiniLM, loaded once for the whole test session."""
    from index.embedder import Embedder

    return Embedder(None, batch_size=32)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroma_exe() -> str:
    exe = Path(sys.executable).with_name("chroma")
    if exe.exists():
        return str(exe)
    found = shutil.which("chroma")
    if not found:
        pytest.fail("the `chroma` CLI (from chromadb) is not installed next to this Python")
    return found


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chroma run` server on a free loopback port; yields its URL, kills it afterwards."""
    data = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [_chroma_exe(), "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {(data / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("chroma run did not answer its heartbeat within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
