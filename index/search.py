"""Search over a built index: dense (Chroma HNSW), bm25 (bm25s), hybrid (index.fusion), jaccard.

`open_searcher` is what the CLI and the replay runtime call. The searcher holds the model, the
Chroma collection and the BM25 index loaded, so each query costs one query embedding plus the
lookups; build it once per process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distill.config import Settings
from distill.errors import DistillError, IndexUnavailable
from distill.workspace import Workspace
from index import bm25 as bm25_mod
from index import jaccard as jaccard_mod
from index.build import file_hash, workspace_paths
from index.documents import Document, same_content_ids
from index.embedder import Embedder, resolve_model
from index.fusion import Fusion
from index.hits import SearchHit, SearchMode
from index.manifest import REBUILD_HINT, IndexPaths, Manifest, load_manifest
from index.store import ChromaStore

MODES: tuple[str, ...] = ("hybrid", "dense", "bm25", "jaccard")
Ranking = list[tuple[str, float]]  # (id, score), best first


@dataclass
class IndexSearcher:
    """Implements index.hits.Searcher over one built index.

    The embedding model and the Chroma store are opened on first use: a BM25 or Jaccard query
    needs neither (no model load, no Chroma), a dense or hybrid one opens both once.

    A text several documents hold (same title, text and category) is one hit, the first of them the
    ranking reaches, naming the others (`same_text_ids`); the k hits are k texts, the next ones
    taking the repeats' places. Without repeats the hits are the rankers' own top k.
    """

    manifest: Manifest
    bm25: bm25_mod.Bm25Index
    load_embedder: Callable[[], Embedder]
    load_store: Callable[[], ChromaStore]
    fusion: Fusion = field(default_factory=Fusion)
    hybrid_depth: int = 100
    paths: IndexPaths | None = None
    _positions: dict[str, int] = field(default_factory=dict, repr=False)
    _jaccard_tokens: list[frozenset[str]] | None = field(default=None, repr=False)
    _embedder: Embedder | None = field(default=None, repr=False)
    _store: ChromaStore | None = field(default=None, repr=False)
    _same_content: dict[str, tuple[str, ...]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._positions = {d.id: i for i, d in enumerate(self.bm25.docs)}

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = self.load_embedder()
            self.manifest.check_compatible(embedder.model_id, embedder.dimension)
            self._embedder = embedder
        return self._embedder

    @property
    def store(self) -> ChromaStore:
        if self._store is None:
            self._store = self.load_store()
        return self._store

    @property
    def count(self) -> int:
        return len(self.bm25.docs)

    @property
    def same_content(self) -> dict[str, tuple[str, ...]]:
        """Each id whose title, text and category another document also has -> all their ids."""
        if self._same_content is None:
            self._same_content = same_content_ids(self.bm25.docs)
        return self._same_content

    def close(self) -> None:
        """Release the store (a rebuilt index is searched through a new searcher)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def search(
        self, query: str, *, k: int = 8, mode: SearchMode = "hybrid", categories: list[str] | None = None
    ) -> list[SearchHit]:
        if mode not in MODES:
            raise DistillError(f"unknown search mode {mode!r}: choose one of {', '.join(MODES)}")
        if k <= 0 or not query.strip() or self.count == 0:
            return []
        cats = list(categories) if categories else None
        if mode == "dense":
            return self._hits(self._distinct(lambda n: self.dense(query, n, cats), k), extra={})
        if mode == "bm25":
            return self._hits(self._distinct(lambda n: self.lexical(query, n, cats), k), extra={})
        if mode == "jaccard":
            return self._hits(self._distinct(lambda n: self.jaccard(query, n, cats), k), extra={})
        return self.hybrid(query, k, cats)

    def _distinct(self, ranked: Callable[[int], Ranking], k: int) -> Ranking:
        """The first k of `ranked(n)` (the best n, best first) whose contents differ: asks for more
        while repeats leave fewer than k and the ranking has more to give."""
        same = self.same_content
        n = min(self.count, k + min(k, len(same)))
        while True:
            got = ranked(n)
            seen: set[tuple[str, ...]] = set()
            kept: Ranking = []
            for doc_id, score in got:
                group = same.get(doc_id)
                if group is not None:
                    if group in seen:
                        continue
                    seen.add(group)
                kept.append((doc_id, score))
                if len(kept) == k:
                    return kept
            if len(got) < n or n >= self.count:
                return kept
            n = min(self.count, 2 * n)

    # --- the retrievers, each returning (id, score) best first ---
    def dense(self, query: str, k: int, categories: list[str] | None = None) -> list[tuple[str, float]]:
        vec = self.embedder.encode_query(query)
        return [(doc_id, 1.0 - dist) for doc_id, dist in self.store.query(vec, k, categories=categories)]

    def lexical(self, query: str, k: int, categories: list[str] | None = None) -> Ranking:
        return [(self.bm25.docs[i].id, s) for i, s in self.bm25.top(query, k, categories=categories)]

    def jaccard(self, query: str, k: int, categories: list[str] | None = None) -> list[tuple[str, float]]:
        if self._jaccard_tokens is None:
            self._jaccard_tokens = [jaccard_mod.token_set(d.embed_text) for d in self.bm25.docs]
        mask = self.bm25.mask(categories)
        allowed = None if mask is None else mask.tolist()
        return [(self.bm25.docs[i].id, s) for i, s in jaccard_mod.rank(query, self._jaccard_tokens, k, allowed=allowed)]

    def hybrid(self, query: str, k: int, categories: list[str] | None = None) -> list[SearchHit]:
        depth = max(self.hybrid_depth, 2 * k)
        dense, lexical = self.rankings(query, depth, categories)

        def fused(n: int) -> Ranking:
            nonlocal depth, dense, lexical
            while True:
                best = self.fusion.fuse(dense, lexical, k=n)
                if len(best) >= n or max(len(dense), len(lexical)) < depth:
                    return best
                depth *= 2  # repeats took the places both rankings held: look deeper
                dense, lexical = self.rankings(query, depth, categories)

        ranked = self._distinct(fused, k)
        dense_rank = {d: r for r, (d, _) in enumerate(dense, start=1)}
        bm25_rank = {d: r for r, (d, _) in enumerate(lexical, start=1)}
        extra = {d: {"dense_rank": dense_rank.get(d), "bm25_rank": bm25_rank.get(d)} for d, _ in ranked}
        return self._hits(ranked, extra=extra)

    def rankings(self, query: str, depth: int, categories: list[str] | None) -> tuple[Ranking, Ranking]:
        """The dense and the BM25 ranking, `depth` deep each, that hybrid fuses."""
        dense = self.dense(query, depth, categories)
        return dense, self.lexical(query, depth, categories)

    def _hits(self, ranked: Sequence[tuple[str, float]], *, extra: dict[str, dict[str, Any]]) -> list[SearchHit]:
        hits = []
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            pos = self._positions.get(doc_id)
            if pos is None:  # in Chroma but not in the document table: the two drifted
                raise DistillError(f"id {doc_id!r} is in Chroma but not in the BM25 document table: {REBUILD_HINT}")
            doc = self.bm25.docs[pos]
            same = [other for other in self.same_content.get(doc_id, ()) if other != doc_id]
            hits.append(_hit(doc, rank, score, extra.get(doc_id), same))
        return hits

    def export_changed(self, ws: Workspace) -> bool:
        """True when the RAG export no longer matches the one this index was built from."""
        return self.manifest.export_hash is not None and file_hash(ws.rag_path) != self.manifest.export_hash


def _hit(doc: Document, rank: int, score: float, retrieval: dict[str, Any] | None, same: list[str]) -> SearchHit:
    metadata = dict(doc.metadata)
    if retrieval:
        metadata["retrieval"] = retrieval
    return SearchHit(id=doc.id, score=float(score), rank=rank, text=doc.text, title=doc.title, category=doc.category,
                     metadata=metadata, same_text_ids=same)


def open_index(
    paths: IndexPaths,
    embedder: Embedder | Callable[[], Embedder],
    *,
    chroma_url: str | None = None,
    fusion: Fusion | None = None,
    search_ef: int | None = None,
    manifest: Manifest | None = None,
    reopen: bool = False,
) -> IndexSearcher:
    """A searcher over the index at `paths`, checked against the manifest. `embedder` is a loaded
    model or a function that loads one when a query first needs it."""
    manifest = manifest or load_manifest(paths.manifest)
    if manifest is None:
        raise DistillError(f"no index in {paths.root} ({paths.manifest.name} is missing): run `distill index` first")
    if isinstance(embedder, Embedder):
        manifest.check_compatible(embedder.model_id, embedder.dimension)
    manifest.check_store(chroma_url, writing=False)
    hnsw = manifest.hnsw if search_ef is None else manifest.hnsw.model_copy(update={"search_ef": search_ef})
    lexical = bm25_mod.load(paths.bm25)
    info = bm25_mod.read_info(paths.bm25) or {}
    if info.get("fingerprint") != manifest.corpus_hash:
        raise DistillError(f"the BM25 index at {paths.bm25} is out of step with the manifest: run `distill index`")

    def load_store() -> ChromaStore:
        store = ChromaStore.open(paths.chroma, manifest.chroma_collection, hnsw, url=chroma_url, reopen=reopen)
        if store.count() != manifest.count:
            raise DistillError(
                f"Chroma collection {manifest.chroma_collection!r} at {chroma_url or paths.chroma} holds {store.count()} "
                f"vectors, the manifest says {manifest.count}: run `distill index`"
            )
        return store

    loaded = embedder if isinstance(embedder, Embedder) else None
    searcher = IndexSearcher(
        manifest=manifest, bm25=lexical, load_embedder=(lambda: loaded) if loaded else embedder,  # type: ignore[arg-type]
        load_store=load_store, fusion=fusion or Fusion(), paths=paths,
    )
    if loaded is not None:
        searcher._embedder = loaded
    return searcher


def index_signature(ws: Workspace) -> tuple[int, int, int] | None:
    """The index manifest's (inode, size, mtime): `distill index` writes the manifest last and
    replaces it whole, so a long-lived searcher can tell, with one stat, that it should reopen."""
    try:
        st = workspace_paths(ws).manifest.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def unless_rewritten(
    ws: Workspace, seen: tuple[int, int, int] | None, search: Callable[[], list[SearchHit]]
) -> list[SearchHit] | None:
    """`search()`'s hits, or None when the index manifest is no longer `seen` after it: search
    again on the reopened index. A rebuild writes its manifest, then drops the collection it
    replaced, and a Chroma query running in a collection while another process drops it may fail
    or answer with no or some of the hits. With the manifest unchanged after the query, no drop
    had begun. A failure with the manifest unchanged is the caller's IndexUnavailable."""
    try:
        hits = search()
    except IndexUnavailable:
        if index_signature(ws) == seen:
            raise
        return None
    return hits if index_signature(ws) == seen else None


def open_searcher(
    ws: Workspace, settings: Settings, *, chroma_url: str | None = None, embedder: Embedder | None = None,
    reopen: bool = False,
) -> IndexSearcher:
    """The searcher over ROOT/index (the replay runtime's entry point). Pass `embedder` to reuse a
    loaded model; `reopen` after a rebuild, so the embedded store is read from disk again."""
    cfg = settings.index
    paths = workspace_paths(ws)
    manifest = load_manifest(paths.manifest)
    if manifest is None:
        raise DistillError(f"no index in {ws.root} yet ({ws.relative(paths.manifest)} is missing): run `distill index` first")
    if embedder is None:
        model_id, _ = resolve_model(cfg.model)
        if model_id != manifest.model_id:  # fail before spending seconds loading a model
            manifest.check_compatible(model_id, manifest.dimension)
    model: Embedder | Callable[[], Embedder] = embedder if embedder is not None else (
        lambda: Embedder.from_settings(cfg)
    )
    return open_index(
        paths, model, chroma_url=chroma_url or cfg.chroma_url, fusion=Fusion.from_settings(cfg),
        search_ef=cfg.hnsw_search_ef,
        manifest=manifest, reopen=reopen,
    )
