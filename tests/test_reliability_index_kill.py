"""`distill index` killed (SIGKILL) at each step that writes: half of the vectors upserted, before
the deletes, before BM25 is saved, before the manifest is written, before a rebuild drops the
collection it replaced; for a first build, an incremental update (rows added, changed in text and in
category only, removed) and a `--rebuild`.

The kill is placed by a wrapper process that runs the real `distill index` command with one step
replaced by a SIGKILL (the code under test is not changed). After it: a search finds the index as it
was before (nothing new searched before the manifest says so) or says which command builds it; the
next `distill index` ends with exactly the export indexed (the same hits as an index built from
scratch), and one more run has nothing to do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distill.config import load_settings
from distill.errors import DistillError
from distill.workspace import Workspace
from tests.fixtures_index import rag_row, write_export
from tests.fixtures_reliability import REPO, cli_env

pytestmark = pytest.mark.slow

QUERIES = ["provider routing fallback timeout", "circuit breaker opens after failures", "daylight saving schedule"]
MODES = ("dense", "bm25", "hybrid")

KILLED_AT = r'''
import os, signal, sys

import index.bm25 as bm25
import index.build as build
import index.store as store

step = sys.argv[1]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if step == "upsert-half":
    upsert = store.ChromaStore.upsert

    def half(self, ids, vectors, texts, metadatas):
        n = max(1, len(ids) // 2)
        upsert(self, ids[:n], vectors[:n], texts[:n], metadatas[:n])
        die()

    store.ChromaStore.upsert = half
elif step == "before-delete":
    store.ChromaStore.delete = die
elif step == "before-bm25":
    bm25.save = die
elif step == "before-manifest":
    build.save_manifest = die
elif step == "before-drop":
    build.drop_collection = die
else:
    raise SystemExit(f"unknown step {step}")

from distill.cli import main

sys.argv = ["distill", "index", *sys.argv[2:]]
main()
'''

FIRST_ROWS = [rag_row(i) for i in range(24)]
# two removed, two whose text changed (new ids), one whose category alone changed (its stored
# vector is kept), three added
CHANGED_ROWS = ([rag_row(i) for i in range(2, 24) if i not in (2, 3, 4)]
                + [rag_row(2, text="Store UTC everywhere; check the scheduler at the DST switch."),
                   rag_row(3, text="Check the circuit breaker half-opens after a cool-down."),
                   rag_row(4, category="needs_human_review")]
                + [rag_row(i) for i in range(24, 27)])


def _search(root: Path, embedder: Any) -> dict[tuple[str, str], list[str]]:
    from index.search import open_searcher

    searcher = open_searcher(Workspace(root), load_settings(root), embedder=embedder)
    return {(q, m): [h.id for h in searcher.search(q, k=5, mode=m)] for q in QUERIES for m in MODES}


def _index(root: Path, embedder: Any, *, rebuild: bool = False) -> Any:
    from index.build import run_index

    return run_index(Workspace(root), load_settings(root), rebuild=rebuild, embedder=embedder, progress=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> dict[str, Any]:
    """Workspaces indexed without a kill: the first export built, and the changed export built from
    scratch; the hits of each."""
    first = tmp_path_factory.mktemp("index-kill") / "first"
    write_export(first, FIRST_ROWS)
    _index(first, embedder)
    changed = tmp_path_factory.mktemp("index-kill") / "changed"
    write_export(changed, CHANGED_ROWS)
    _index(changed, embedder)
    return {"first": first, "first_hits": _search(first, embedder), "changed_hits": _search(changed, embedder)}


CASES = [
    ("first", "upsert-half"), ("first", "before-bm25"), ("first", "before-manifest"),
    ("update", "upsert-half"), ("update", "before-delete"), ("update", "before-manifest"),
    ("rebuild", "upsert-half"), ("rebuild", "before-manifest"), ("rebuild", "before-drop"),
]


@pytest.mark.parametrize(("build", "step"), CASES)
def test_a_killed_index_run_leaves_a_searchable_index_and_the_next_run_completes_it(
        build: str, step: str, clean: dict[str, Any], embedder: Any, tmp_path: Path) -> None:
    root = tmp_path / "ws"  # a new path: chromadb caches clients per path
    if build == "first":
        write_export(root, FIRST_ROWS)
    else:
        shutil.copytree(clean["first"], root, ignore=shutil.ignore_patterns("*.lock"))
        if build == "update":
            write_export(root, CHANGED_ROWS)
    args = ["--root", str(root), *(["--rebuild"] if build == "rebuild" else [])]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, step, *args], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, (step, killed.returncode, killed.stderr[-1500:])

    # before the next run: the index the last manifest names, or none
    if build == "first" and step != "before-drop":
        with pytest.raises(DistillError, match="distill index"):
            _search(root, embedder)
    elif build == "rebuild":
        # the rebuild fills the collection the manifest does not search; after the manifest
        # switched to it (before-drop) the hits are the same, as the export is
        assert _search(root, embedder) == clean["first_hits"], step

    wanted_rows = CHANGED_ROWS if build == "update" else FIRST_ROWS
    report = _index(root, embedder)
    assert report.count == len(wanted_rows)
    assert _search(root, embedder) == (clean["changed_hits"] if build == "update" else clean["first_hits"]), step
    again = _index(root, embedder)
    assert (again.embedded, again.metadata_only, again.deleted, again.added) == (0, 0, 0, 0), again
