"""ChromaDB vector store: embedded PersistentClient or a `chroma run` server, one code path.

The collection is created with its HNSW space, M (max_neighbors), construction ef and search ef
set explicitly, and with no embedding function: vectors always come from our Embedder, so
chromadb's default embedding function (which downloads a model) is never involved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel

from distill.config import IndexSettings, parse_http_url
from distill.errors import DistillError, IndexUnavailable
from distill.jsonl import dumps

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection


def _setting_default(name: str) -> Any:
    return IndexSettings.model_fields[name].default


class HnswParams(BaseModel):
    """The HNSW settings a collection is built with (recorded in the manifest); the defaults are
    [index]'s, written once in distill.config."""

    space: str = _setting_default("hnsw_space")
    m: int = _setting_default("hnsw_m")
    construction_ef: int = _setting_default("hnsw_construction_ef")
    search_ef: int = _setting_default("hnsw_search_ef")

    @classmethod
    def from_settings(cls, s: IndexSettings) -> HnswParams:
        return cls(space=s.hnsw_space, m=s.hnsw_m, construction_ef=s.hnsw_construction_ef, search_ef=s.hnsw_search_ef)

    def chroma_configuration(self) -> dict[str, Any]:
        return {
            "hnsw": {
                "space": self.space,
                "max_neighbors": self.m,
                "ef_construction": self.construction_ef,
                "ef_search": self.search_ef,
            }
        }


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """http(s)://host[:port] -> (host, port, ssl); a bad URL is a usage error, not a traceback."""
    try:
        host, port, ssl = parse_http_url(url)
    except ValueError as exc:
        raise DistillError(f"--chroma-url {exc}") from None
    return host, port or (443 if ssl else 8000), ssl  # 8000: `chroma run`'s port


STORE_FILE = "chroma.sqlite3"  # what an embedded Chroma store keeps its records in


def connect(path: Path, url: str | None, *, discard_unreadable: bool = False, reopen: bool = False) -> ClientAPI:
    """HttpClient when a server URL is given, else a PersistentClient at `path`.

    An embedded store that cannot be opened (e.g. a corrupted chroma.sqlite3) is a DistillError
    naming the rebuild; with `discard_unreadable` (a rebuild, which drops the collection anyway)
    the unreadable directory is removed and a fresh store is created in its place.
    """
    import shutil

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if url:
        host, port, ssl = parse_chroma_url(url)
        try:
            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=chroma_settings)
        except Exception as exc:  # chromadb raises plain ValueError/ConnectionError variants
            raise DistillError(f"cannot reach the Chroma server at {url}: {exc}") from exc
    if reopen or not (path / STORE_FILE).exists():
        # a store deleted while this process held a client for it: chromadb would hand back the
        # cached System, still writing to the deleted files (a run then reports vectors that the
        # next process does not find); a store rebuilt by another process: the cached System would
        # keep searching the vectors it loaded
        _forget_cached_system(str(path))
    path.mkdir(parents=True, exist_ok=True)
    try:
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except Exception as exc:  # chromadb.errors.InternalError ("file is not a database") and kin
        _forget_cached_system(str(path))
        if not_writable(path, exc):
            # a rebuild would delete the store and still fail: say what is really wrong
            raise DistillError(
                f"the Chroma store at {path} cannot be written ({exc}): fix its permissions or the file system; "
                "a rebuild would not help"
            ) from exc
        if not discard_unreadable:
            raise DistillError(
                f"the Chroma store at {path} cannot be opened ({exc}): run `distill index --rebuild`"
            ) from exc
    shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except Exception as exc:
        raise DistillError(f"cannot create a Chroma store at {path}: {exc}") from exc


_NOT_WRITABLE = ("readonly", "read-only", "read only", "permission denied", "access denied")


def not_writable(path: Path, exc: BaseException) -> bool:
    """The store fails because it cannot be written (a read-only mount, file modes), not because
    its content is damaged."""
    import os

    text = str(exc).lower()
    if any(marker in text for marker in _NOT_WRITABLE):
        return True
    return any(not os.access(p, os.W_OK) for p in (path, *path.glob("*")) if p.exists())


def _forget_cached_system(identifier: str) -> None:
    """chromadb caches a client's System per path (before starting it), and hands it back to every
    later client for that path: one that failed to start, or one whose files were deleted, must be
    dropped for the next client to open the store on disk."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient._identifier_to_system.pop(identifier, None)
    except (ImportError, AttributeError):  # another chromadb layout: nothing cached to drop
        pass


LOCKED_TRIES = 6  # a write refused with "database is locked" is tried again this many times in all
T = TypeVar("T")


def when_unlocked(write: Callable[[], T], *, pause_s: float = 0.05) -> T:
    """An idempotent write to the embedded store, tried again when SQLite refuses it as locked.

    Chroma's embedded store opens deferred SQLite transactions in rollback-journal mode: one that
    read and must then write while another connection of the same client holds the write lock is
    refused at once with "database is locked" (SQLite returns BUSY instead of waiting, so the
    busy timeout does not apply). Seen once from `modify` right after a client opened, under load.
    Upserts, deletes and the ef update can be repeated without changing their outcome."""
    for attempt in range(LOCKED_TRIES):
        try:
            return write()
        except Exception as exc:  # chromadb.errors.InternalError: imported lazily, matched by its text
            if "database is locked" not in str(exc) or attempt == LOCKED_TRIES - 1:
                raise
            time.sleep(pause_s * 2**attempt)
    raise AssertionError("unreachable")


def chroma_metadata(doc_category: str | None, title: str | None, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Chroma accepts scalars and flat lists of scalars; anything else is stored as JSON text."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (str, int, float, bool)):
            out[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out[key] = value
        elif isinstance(value, list) and not value:
            continue
        else:
            out[key] = dumps(value).decode()
    if doc_category is not None:
        out["category"] = doc_category
    if title:
        out["title"] = title
    return out


@dataclass
class ChromaStore:
    """One collection in one client. All writes are split to the client's max batch size."""

    client: ClientAPI
    collection: Collection
    hnsw: HnswParams
    url: str | None

    @classmethod
    def open(
        cls, path: Path, name: str, hnsw: HnswParams, *, url: str | None = None, reset: bool = False,
        reopen: bool = False,
    ) -> ChromaStore:
        """`reopen`: the store was rebuilt since this process opened it; chromadb's cached client
        would keep answering from the vectors it loaded then."""
        client = connect(path, url, discard_unreadable=reset, reopen=reopen)
        if reset:
            drop_collection(client, name, None if url else path)
        try:
            collection = client.get_or_create_collection(
                name, configuration=hnsw.chroma_configuration(), embedding_function=None  # type: ignore[arg-type]
            )
        except Exception as exc:
            raise DistillError(f"cannot open Chroma collection {name!r}: {exc}") from exc
        store = cls(client=client, collection=collection, hnsw=hnsw, url=url)
        store.check_configuration()
        return store

    def close(self) -> None:
        """Release the client: for an embedded store, the last client of a path stops its System
        (memory, SQLite connections), so the next client of the path reads the store from disk."""
        close = getattr(self.client, "close", None)  # chromadb < 1.1 has none: nothing to release
        if close is not None:
            close()

    def check_configuration(self) -> None:
        """An existing collection built with another space/M/construction ef needs a rebuild."""
        actual = (self.collection.configuration or {}).get("hnsw") or {}
        want = self.hnsw.chroma_configuration()["hnsw"]
        for key in ("space", "max_neighbors", "ef_construction"):
            if key in actual and actual[key] != want[key]:
                raise DistillError(
                    f"Chroma collection {self.collection.name!r} was built with hnsw {key}={actual[key]}, "
                    f"settings ask for {want[key]}: run `distill index --rebuild`"
                )
        if actual.get("ef_search") not in (None, want["ef_search"]):
            self.set_search_ef(want["ef_search"])

    def set_search_ef(self, ef: int) -> None:
        """Search ef is the one HNSW knob that can change after creation.

        Chroma 1.5 stores it at once but applies it when a process next loads the index: an index
        already loaded in this process keeps the ef it was loaded with.
        """
        self._write("set its search ef", partial(self.collection.modify, configuration={"hnsw": {"ef_search": ef}}))  # type: ignore[arg-type]
        self.hnsw = self.hnsw.model_copy(update={"search_ef": ef})

    @property
    def max_batch(self) -> int:
        return max(1, int(self.client.get_max_batch_size()))

    def count(self) -> int:
        return int(self.collection.count())

    def ids(self) -> set[str]:
        """Every id in the collection (paged, so a large collection is not one giant response)."""
        out: set[str] = set()
        page = max(self.max_batch, 1000)
        offset = 0
        while True:
            got = self.collection.get(include=[], limit=page, offset=offset)
            out.update(got["ids"])
            if len(got["ids"]) < page:
                return out
            offset += page

    def _write(self, what: str, write: Callable[[], T]) -> T:
        """A write to the store; one it refuses is a one-line error, not chromadb's traceback (a
        full disk gave `InternalError: ... database or disk is full`, or `Error in compaction`)."""
        try:
            return when_unlocked(write)
        except Exception as exc:  # chromadb.errors.InternalError and kin, an HTTP client's errors
            raise DistillError(
                f"Chroma could not {what} in collection {self.collection.name!r} ({type(exc).__name__}: {exc}); "
                "run `distill index` again once that is fixed (a full disk gives this)"
            ) from exc

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray,
        documents: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> int:
        for lo, hi in _batches(len(ids), self.max_batch):
            batch = {"ids": list(ids[lo:hi]), "embeddings": embeddings[lo:hi], "documents": list(documents[lo:hi]),
                     "metadatas": [dict(m) if m else None for m in metadatas[lo:hi]]}
            self._write("store vectors", partial(self.collection.upsert, **batch))  # type: ignore[arg-type]
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        ids = list(ids)
        for lo, hi in _batches(len(ids), self.max_batch):
            self._write("delete vectors", partial(self.collection.delete, ids=ids[lo:hi]))
        return len(ids)

    def query(
        self, embedding: np.ndarray, k: int, *, categories: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """Nearest ids with their distance (cosine distance = 1 - cosine similarity)."""
        if k <= 0:
            return []
        where: dict[str, Any] | None = None
        if categories:
            where = {"category": {"$in": list(categories)}}
        try:
            res = self.collection.query(
                query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1),
                n_results=k,  # Chroma returns fewer when the collection is smaller
                where=where,  # type: ignore[arg-type]
                include=["distances"],  # type: ignore[list-item]
            )
        except Exception as exc:  # chromadb's NotFoundError/InternalError, an HTTP client's connection errors
            raise IndexUnavailable(
                f"Chroma collection {self.collection.name!r} could not be searched ({type(exc).__name__}: {exc})"
            ) from exc
        ids = res["ids"][0]
        dists = (res["distances"] or [[]])[0]
        return [(i, float(d)) for i, d in zip(ids, dists, strict=True)]


def drop_collection(client: ClientAPI, name: str, path: Path | None = None) -> bool:
    """Drop a collection; for an embedded store at `path`, also free the disk it held."""
    try:
        client.delete_collection(name)
    except Exception:  # NotFoundError in 1.x; its import path moved between releases
        return False
    if path is not None:
        prune_dropped_segments(path)
    return True


def prune_dropped_segments(path: Path) -> int:
    """Remove the segment folders of an embedded store that no segment row names any more.

    chromadb 1.x deletes a dropped collection's rows but leaves its HNSW folder on disk
    (chroma-core/chroma#5259, #5520): every `--rebuild` would leave a full copy of the vectors
    behind. Only folders named like a segment id are considered; a store whose catalogue cannot be
    read is left as it is. Returns how many folders were removed."""
    import contextlib
    import shutil
    import sqlite3
    import uuid

    catalogue = path / STORE_FILE
    if not catalogue.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"{catalogue.as_uri()}?mode=ro", uri=True)) as conn:
            named = {str(row[0]) for row in conn.execute("SELECT id FROM segments")}
    except sqlite3.Error:  # another catalogue layout, or a store being replaced: keep everything
        return 0
    removed = 0
    for child in path.iterdir():
        try:
            is_segment = str(uuid.UUID(child.name)) == child.name
        except ValueError:
            is_segment = False
        if is_segment and child.name not in named and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
    return removed


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)
