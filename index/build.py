"""Incremental indexing: embed and upsert only new/changed ids, delete vanished ids, touch nothing else.

Works on any document set (`build_index`); `run_index` is the `distill index` stage over the RAG
export, with its StageReport for receipts. Crash-safe by construction: the manifest is written
last, and every run reconciles against the ids actually in Chroma, so a build cut short is
finished by the next run rather than trusted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from distill.config import Settings
from distill.errors import DistillError
from distill.hashing import sha256_hex
from distill.jsonl import lock_for, write_jsonl_atomic
from distill.records.stage import Counts, StageReport
from distill.workspace import Workspace
from index import bm25 as bm25_mod
from index.documents import Document, load_rag_export
from index.embedder import Embedder, resolve_model
from index.manifest import (
    REBUILD_HINT,
    DocHashes,
    IndexPaths,
    Manifest,
    load_manifest,
    rebuild_target,
    same_store,
    save_manifest,
)
from index.store import ChromaStore, HnswParams, chroma_metadata, drop_collection

ProgressFlag = bool | None


class IndexReport(BaseModel):
    """What one indexing run did. `embedded` counts texts that went through the model: a document
    whose text another one has (encoded this run, or stored) takes that vector (`shared_vectors`)."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    embedded: int = 0
    metadata_only: int = Field(0, description="updated ids whose text was unchanged: stored vector reused")
    shared_vectors: int = Field(0, description="new or changed ids whose text another document has: its vector reused")
    count: int = 0
    rebuild: bool = False
    bm25_rebuilt: bool = False
    model_id: str
    dimension: int
    hnsw: HnswParams
    collection: str
    chroma: str = Field(description="the Chroma data directory, or the server URL")
    manifest: str
    export_hash: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    stage_report: StageReport = Field(default_factory=lambda: StageReport(stage="index"))


def _vector_sources(embed: Sequence[Document], docs: Sequence[Document], manifest: Manifest | None,
                    stored: set[str]) -> tuple[list[int], dict[int, str]]:
    """For the documents that need a vector (`embed`): which go through the model (positions: the
    first of each text), and which take the stored vector of an unchanged document with the same
    embedded text (position -> its id). The rest take the vector of the first of their text encoded
    this run. The same text gives the same vector, so runs that write a text again cost no
    encoding. Only an unchanged document lends its vector: one this run rewrites or deletes may hold
    a vector of a run killed before its manifest was written."""
    wanted = {d.text_hash for d in embed}
    stored_with: dict[str, str] = {}
    if manifest is not None and wanted:
        for doc in docs:
            old = manifest.docs.get(doc.id)
            if (doc.text_hash in wanted and old is not None and old.content == doc.content_hash
                    and doc.id in stored):
                stored_with.setdefault(doc.text_hash, doc.id)
    encode: list[int] = []
    from_store: dict[int, str] = {}
    first: set[str] = set()
    for i, doc in enumerate(embed):
        if doc.text_hash in stored_with:
            from_store[i] = stored_with[doc.text_hash]
        elif doc.text_hash not in first:
            first.add(doc.text_hash)
            encode.append(i)
    return encode, from_store


def corpus_hash(docs: Sequence[Document]) -> str:
    """Fingerprint of a document set: every id with its content hash, order-independent."""
    return sha256_hex("\n".join(sorted(f"{d.id}\t{d.content_hash}" for d in docs)))


@dataclass
class _Plan:
    embed: list[Document]
    reuse: list[Document]  # changed metadata, same text: keep the stored vector
    delete: list[str]
    added: int
    updated: int
    unchanged: int


def _plan(docs: Sequence[Document], manifest: Manifest | None, stored: set[str]) -> _Plan:
    known = manifest.docs if manifest else {}
    embed: list[Document] = []
    reuse: list[Document] = []
    added = updated = unchanged = 0
    for doc in docs:
        old = known.get(doc.id)
        if old is None or doc.id not in stored:
            added += old is None
            updated += old is not None
            embed.append(doc)
        elif old.content == doc.content_hash:
            unchanged += 1
        else:
            updated += 1
            (embed if old.text != doc.text_hash else reuse).append(doc)
    current = {d.id for d in docs}
    delete = sorted((set(known) | stored) - current)
    return _Plan(embed=embed, reuse=reuse, delete=delete, added=added, updated=updated, unchanged=unchanged)


def _check_duplicates(docs: Sequence[Document]) -> None:
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise DistillError(f"document id {d.id!r} appears twice in the set to index")
        seen.add(d.id)


def build_index(
    paths: IndexPaths,
    docs: Sequence[Document],
    embedder: Embedder,
    *,
    collection: str,
    hnsw: HnswParams,
    chroma_url: str | None = None,
    rebuild: bool = False,
    source: str | None = None,
    export_hash: str | None = None,
    progress: ProgressFlag = None,
    clock: Callable[[], float] = time.perf_counter,
) -> IndexReport:
    """Bring the index at `paths` in step with `docs` (any (id, text, metadata) set)."""
    _check_duplicates(docs)
    paths.root.mkdir(parents=True, exist_ok=True)
    with lock_for(paths.root / "index").acquire(timeout=600):
        return _build_locked(
            paths, docs, embedder, collection=collection, hnsw=hnsw, chroma_url=chroma_url,
            rebuild=rebuild, source=source, export_hash=export_hash, progress=progress, clock=clock,
        )


def _build_locked(
    paths: IndexPaths,
    docs: Sequence[Document],
    embedder: Embedder,
    *,
    collection: str,
    hnsw: HnswParams,
    chroma_url: str | None,
    rebuild: bool,
    source: str | None,
    export_hash: str | None,
    progress: ProgressFlag,
    clock: Callable[[], float],
) -> IndexReport:
    t0 = clock()
    # a rebuild in the store the live manifest searches alternates collections, so searchers keep
    # theirs until the new manifest is written
    live = _searched_manifest(paths.manifest) if rebuild else None
    if live is not None and not same_store(live.chroma_url, chroma_url):
        live = None  # built in another store: this rebuild neither alternates with nor drops its collection
    manifest = None if rebuild else load_manifest(paths.manifest)
    if manifest is not None:
        manifest.check_compatible(embedder.model_id, embedder.dimension)
        manifest.check_update(hnsw, chroma_url, collection)
    # No manifest means whatever is in the collection came from an unknown model: start over. A
    # rebuild starts over in the collection the live manifest does not search, and switches to it
    # when the manifest is written: a server searching the index keeps answering meanwhile.
    if manifest is not None:
        target = manifest.chroma_collection
    elif live is not None:
        target = rebuild_target(collection, live.chroma_collection)
    else:
        target = collection
    store = ChromaStore.open(paths.chroma, target, hnsw, url=chroma_url, reset=manifest is None)
    stored = store.ids()
    plan = _plan(docs, manifest, stored)
    t_plan = clock()

    encode, from_store = _vector_sources(plan.embed, docs, manifest, stored)
    encoded = embedder.encode_documents([plan.embed[i].embed_text for i in encode], progress=progress)
    t_embed = clock()
    fetch = sorted({*from_store.values(), *(d.id for d in plan.reuse)})
    kept: dict[str, np.ndarray] = {}
    if fetch:  # vectors already in the store: an id's own (metadata changed), or one of the same text
        got = store.collection.get(ids=fetch, include=["embeddings"])  # type: ignore[arg-type]
        kept = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))
    by_text = {plan.embed[i].text_hash: encoded[n] for n, i in enumerate(encode)}
    rows = [kept[from_store[i]] if i in from_store else by_text[d.text_hash] for i, d in enumerate(plan.embed)]
    rows += [kept[d.id] for d in plan.reuse]
    writes = plan.embed + plan.reuse
    vectors = np.stack(rows) if rows else np.zeros((0, embedder.dimension), dtype=np.float32)
    store.upsert(
        [d.id for d in writes],
        vectors,
        [d.text for d in writes],
        [chroma_metadata(d.category, d.title, d.metadata) for d in writes],
    )
    store.delete(plan.delete)
    t_store = clock()

    fingerprint = corpus_hash(docs)
    info = bm25_mod.read_info(paths.bm25)
    changed = bool(writes or plan.delete)
    bm25_rebuilt = changed or info is None or info.get("fingerprint") != fingerprint or info.get("tokenizer") != bm25_mod.TOKENIZER
    if bm25_rebuilt:
        bm25_mod.save(bm25_mod.build(docs), paths.bm25, fingerprint=fingerprint)
    t_bm25 = clock()

    new_manifest = Manifest(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        normalized=embedder.normalize,
        hnsw=store.hnsw,
        collection=collection,
        store_collection=None if target == collection else target,
        chroma_url=chroma_url,
        source=source,
        export_hash=export_hash,
        corpus_hash=fingerprint,
        count=len(docs),
        docs={d.id: DocHashes(content=d.content_hash, text=d.text_hash) for d in docs},
    )
    if manifest is None or changed or bm25_rebuilt or manifest.model_dump() != new_manifest.model_dump():
        save_manifest(paths.manifest, new_manifest)
    if live is not None and live.chroma_collection != target:
        # searchers reopen on the new manifest
        drop_collection(store.client, live.chroma_collection, None if chroma_url else paths.chroma)
    t_end = clock()
    if store.count() != len(docs):
        raise DistillError(
            f"Chroma collection {collection!r} holds {store.count()} vectors after indexing {len(docs)} documents "
            f"(another writer?): {REBUILD_HINT}"
        )
    return IndexReport(
        added=plan.added,
        updated=plan.updated,
        deleted=len(plan.delete),
        unchanged=plan.unchanged,
        embedded=len(encode),
        shared_vectors=len(plan.embed) - len(encode),
        metadata_only=len(plan.reuse),
        count=len(docs),
        rebuild=rebuild or manifest is None,
        bm25_rebuilt=bm25_rebuilt,
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        hnsw=store.hnsw,
        collection=collection,
        chroma=chroma_url or str(paths.chroma),
        manifest=str(paths.manifest),
        export_hash=export_hash,
        timings_s={
            "plan": round(t_plan - t0, 4),
            "embed": round(t_embed - t_plan, 4),
            "store": round(t_store - t_embed, 4),
            "bm25": round(t_bm25 - t_store, 4),
            "manifest": round(t_end - t_bm25, 4),
            "total": round(t_end - t0, 4),
        },
    )


def _searched_manifest(path: Path) -> Manifest | None:
    """The manifest searchers use now, if it can be read (a rebuild also mends an unreadable one)."""
    try:
        return load_manifest(path)
    except DistillError:
        return None


def file_hash(path: Path) -> str | None:
    """sha256 of a file's bytes (streamed), None when it does not exist."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def workspace_paths(ws: Workspace) -> IndexPaths:
    return IndexPaths(ws.index_dir)


def run_index(
    ws: Workspace,
    settings: Settings,
    *,
    rebuild: bool = False,
    chroma_url: str | None = None,
    embedder: Embedder | None = None,
    progress: ProgressFlag = None,
) -> IndexReport:
    """The `index` stage: keep ROOT/index in step with ROOT/exports/rag/playbooks.jsonl."""
    cfg = settings.index
    export = ws.rag_path
    if not export.exists():
        raise DistillError(f"no RAG export at {ws.relative(export)}: run `distill export` first")
    rel = ws.relative(export)
    export_hash = file_hash(export)
    loaded = load_rag_export(export, relative_name=rel)
    if embedder is None and not rebuild:
        previous = load_manifest(workspace_paths(ws).manifest)
        model_id, _ = resolve_model(cfg.model)
        if previous is not None and previous.model_id != model_id:  # fail before loading a model
            previous.check_compatible(model_id, previous.dimension)
    emb = embedder if embedder is not None else Embedder.from_settings(cfg)
    report = build_index(
        workspace_paths(ws),
        loaded.documents,
        emb,
        collection=cfg.collection,
        hnsw=HnswParams.from_settings(cfg),
        chroma_url=chroma_url or cfg.chroma_url,
        rebuild=rebuild,
        source=rel,
        export_hash=export_hash,
        progress=progress,
    )
    quarantine = ws.quarantine_path("index")
    if loaded.quarantined or quarantine.exists():
        write_jsonl_atomic(quarantine, (q.to_json_dict() for q in loaded.quarantined))

    counts = Counts(
        rows_in=loaded.rows_in,
        written=report.added + report.updated,
        quarantined=len(loaded.quarantined),
        deduped=report.unchanged,
    )
    for q in loaded.quarantined:
        counts.by_reason[q.reason.value] = counts.by_reason.get(q.reason.value, 0) + 1
    for d in loaded.documents:
        if d.category:
            counts.by_category[d.category] = counts.by_category.get(d.category, 0) + 1
    outputs = [ws.relative(ws.index_dir / "manifest.json"), ws.relative(ws.index_dir / "bm25")]
    if not (chroma_url or cfg.chroma_url):
        outputs.append(ws.relative(ws.index_dir / "chroma"))
    if loaded.quarantined:
        outputs.append(ws.relative(quarantine))
    stage = StageReport(
        stage="index",
        by_source={"rag": counts},
        inputs=[rel],
        outputs=outputs,
        notes=[
            f"embedded {report.embedded}, vectors shared by the same text {report.shared_vectors}, "
            f"deleted {report.deleted}, metadata-only {report.metadata_only}",
            f"model {report.model_id} ({report.dimension}d), hnsw {report.hnsw.model_dump()}",
            f"chroma {report.chroma}",
        ],
    ).finalize()
    if not stage.balanced:  # pragma: no cover - a bug, not an input problem
        raise DistillError(f"index stage counts do not add up: {stage.totals}")
    return report.model_copy(update={"stage_report": stage})
