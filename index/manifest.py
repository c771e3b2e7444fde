"""ROOT/index/manifest.json: what the index was built with, and a content hash per id.

The manifest is what makes re-indexing incremental (compare hashes, embed only the difference)
and what makes a stale index loud: an index built with another model or dimension cannot be
searched with this one, and the error says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

from distill.errors import DistillError, UsageError
from distill.jsonl import loads, write_atomic
from index.store import HnswParams, parse_chroma_url

MANIFEST_FORMAT = 1
REBUILD_HINT = "run `distill index --rebuild`"
REBUILD_SUFFIX = "-rebuilt"  # the second of the two collections a rebuild alternates between


def rebuild_target(collection: str, live: str | None) -> str:
    """The collection a rebuild fills: the one of `collection` and `collection + REBUILD_SUFFIX`
    that is not live (searched by the manifest in place), so the live one serves until the switch."""
    return collection + REBUILD_SUFFIX if live == collection else collection


@dataclass(frozen=True)
class IndexPaths:
    """Where one index lives: Chroma data, BM25 folder and manifest side by side."""

    root: Path

    @property
    def chroma(self) -> Path:
        return self.root / "chroma"

    @property
    def bm25(self) -> Path:
        return self.root / "bm25"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


class DocHashes(BaseModel):
    content: str
    text: str


class Manifest(BaseModel):
    format: int = MANIFEST_FORMAT
    model_id: str
    dimension: int
    normalized: bool = True
    hnsw: HnswParams
    collection: str
    store_collection: str | None = Field(
        None, description="the Chroma collection holding the vectors when it is not `collection`: a rebuild fills "
        "the other of the two and switches to it once done, so a server searching the index keeps its answers"
    )
    chroma_url: str | None = None
    source: str | None = Field(None, description="what was indexed (e.g. exports/rag/playbooks.jsonl)")
    export_hash: str | None = Field(None, description="sha256 of the source file the index was built from")
    corpus_hash: str = Field(description="hash over every (id, content hash): the document set's fingerprint")
    count: int
    docs: dict[str, DocHashes] = Field(default_factory=dict)
    # No build time: the manifest is a tracked output of the index stage, and a receipt hashes
    # content, never the wall clock (a rebuild of the same export gives the same bytes).

    @model_validator(mode="before")
    @classmethod
    def _drop_build_time(cls, data: object) -> object:
        """Manifests written before build times were dropped carry `built_at`: ignore it."""
        if isinstance(data, dict) and "built_at" in data:
            data = {k: v for k, v in data.items() if k != "built_at"}
        return data

    @property
    def chroma_collection(self) -> str:
        """Where the vectors are (`collection`, or the other name a rebuild switched to)."""
        return self.store_collection or self.collection

    def check_compatible(self, model_id: str, dimension: int) -> None:
        """Searching or updating with another model would mix vector spaces: refuse."""
        if self.model_id != model_id:
            raise DistillError(
                f"the index at this root was built with embedding model {self.model_id!r} but the settings "
                f"use {model_id!r}: {REBUILD_HINT} (or set [index] model back)"
            )
        if self.dimension != dimension:
            raise DistillError(
                f"the index holds {self.dimension}-dimensional vectors but model {model_id!r} makes "
                f"{dimension}-dimensional ones: {REBUILD_HINT}"
            )

    def check_store(self, chroma_url: str | None, *, writing: bool) -> None:
        """The vectors are where the index was built: another store (the embedded one after a build
        on a server, or another server) may hold a collection of the same name and size from an
        older build, which would be searched, or updated in place, without a word."""
        if same_store(self.chroma_url, chroma_url):
            return
        built = f"the Chroma server at {self.chroma_url}" if self.chroma_url else "the embedded store (index/chroma)"
        asked = f"the Chroma server at {chroma_url}" if chroma_url else "the embedded store"
        same = f"--chroma-url {self.chroma_url} (or [index] chroma_url)" if self.chroma_url else "no --chroma-url (and no [index] chroma_url)"
        fix = f"pass {same}, or {REBUILD_HINT} to build it in {asked}" if writing else f"pass {same}"
        raise UsageError(f"the index was built in {built}, this {'run writes to' if writing else 'search reads'} {asked}: {fix}")

    def check_update(self, hnsw: HnswParams, chroma_url: str | None, collection: str) -> None:
        """An update (not a rebuild) keeps the HNSW build settings, the store and the collection the
        index was built with; anything else needs the rebuild the message names."""
        built = self.hnsw
        if (built.space, built.m, built.construction_ef) != (hnsw.space, hnsw.m, hnsw.construction_ef):
            raise UsageError(
                f"the index was built with hnsw space={built.space} M={built.m} ef_construction={built.construction_ef}; "
                f"settings ask for space={hnsw.space} M={hnsw.m} ef_construction={hnsw.construction_ef}: {REBUILD_HINT}"
            )
        self.check_store(chroma_url, writing=True)
        if self.collection != collection:
            raise UsageError(
                f"the index was built in collection {self.collection!r}, settings name {collection!r}: {REBUILD_HINT}"
            )


def same_store(a: str | None, b: str | None) -> bool:
    """Whether two chroma URLs (None: the embedded store) name one store (`http://h:8000/` = `h`)."""
    if a is None or b is None:
        return a is b
    return a == b or parse_chroma_url(a) == parse_chroma_url(b)


def load_manifest(path: Path, *, docs: bool = True) -> Manifest | None:
    """The manifest, None when there is none; an unreadable one is an error naming the rebuild.
    `docs=False` leaves out the per-document hashes (a third of the time at 100k documents) for a
    caller that only reads the build settings."""
    if not path.exists():
        return None
    try:
        data = loads(path.read_bytes())
        if not docs and isinstance(data, dict):
            data["docs"] = {}
        manifest = Manifest.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise DistillError(f"index manifest {path} is unreadable ({exc.__class__.__name__}): {REBUILD_HINT}") from exc
    if manifest.format != MANIFEST_FORMAT:
        raise DistillError(f"index manifest {path} has format {manifest.format}: {REBUILD_HINT}")
    return manifest


def save_manifest(path: Path, manifest: Manifest) -> None:
    # without a switched collection the file is what it was before rebuilds switched (same bytes)
    unset = {"store_collection"} if manifest.store_collection is None else None
    write_atomic(path, manifest.model_dump_json(indent=1, exclude=unset).encode())
