"""What the index holds: a Document (id, text, metadata), built from RAG rows or given directly.

The index does not care where documents come from: the RAG export is one source, a BEIR corpus
(the retrieval benchmark) is another. Each document has a content hash over everything the index
stores for it, so an incremental build can tell new, changed and unchanged ids apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from distill.hashing import canonical_json, sha256_hex
from distill.jsonl import iter_raw_lines, loads
from distill.records.quarantine import QuarantineReason, QuarantineRecord, SourceRef
from distill.records.samples import RagSample

# RagSample fields copied into a hit's metadata (the replay runtime reads them).
RAG_METADATA_FIELDS = ("source_run_id", "task_id", "validation_steps", "source_category", "title", "tags", "source_files")


@dataclass(frozen=True)
class Document:
    """One indexable unit. `category` is what `--category` filters on (a RAG row's success_score).

    Immutable; the derived text and hashes are computed once per instance (cached_property).
    """

    id: str
    text: str
    title: str | None = None
    category: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def embed_text(self) -> str:
        """The text that is embedded and BM25-tokenised: title and body, as BEIR evaluates them."""
        if self.title and not self.text.startswith(self.title):
            return f"{self.title}\n{self.text}"
        return self.text

    @cached_property
    def text_hash(self) -> str:
        """Changes only when the embedded text changes (a metadata-only edit needs no re-embedding)."""
        return sha256_hex(self.embed_text)[:32]

    @cached_property
    def content_hash(self) -> str:
        """Changes when anything the index stores for this id changes."""
        payload = {"text": self.text, "title": self.title, "category": self.category, "metadata": dict(self.metadata)}
        return sha256_hex(canonical_json(payload))[:32]

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "title": self.title,
            "category": self.category,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Document:
        return cls(
            id=str(row["id"]),
            text=str(row["text"]),
            title=row.get("title"),
            category=row.get("category"),
            metadata=dict(row.get("metadata") or {}),
        )


def same_content_ids(docs: Sequence[Document]) -> dict[str, tuple[str, ...]]:
    """Each id whose title, text and category another document also has -> the ids of all of them,
    in index order (one tuple shared by the group). Several runs often write the same text (a fact
    distilled twice, one verdict given to two reviews); a search shows it once. Hashes are sorted
    first and only equal hashes compared, so an index of distinct texts holds nothing here."""
    import numpy as np

    keys = np.fromiter((hash((d.title, d.text, d.category)) for d in docs), dtype=np.int64, count=len(docs))
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    equal_next = np.flatnonzero(ranked[1:] == ranked[:-1]).tolist()
    runs: list[list[int]] = []  # [first, last] positions in hash order of each run of equal hashes
    for at in equal_next:
        if runs and runs[-1][1] == at:
            runs[-1][1] = at + 1
        else:
            runs.append([at, at + 1])
    out: dict[str, tuple[str, ...]] = {}
    for first, last in runs:
        by_content: dict[tuple[str | None, str, str | None], list[str]] = {}
        for position in sorted(order[first:last + 1].tolist()):
            d = docs[position]
            by_content.setdefault((d.title, d.text, d.category), []).append(d.id)
        for ids in by_content.values():  # equal hashes, equal contents: a collision is two groups
            if len(ids) > 1:
                group = tuple(ids)
                out.update(dict.fromkeys(group, group))
    return out


def from_rag_sample(sample: RagSample) -> Document:
    """A RAG export row as a document: category = success_score, runtime fields in metadata."""
    data = sample.model_dump(mode="json")
    metadata = {name: data[name] for name in RAG_METADATA_FIELDS}
    metadata["created_at"] = data["created_at"]
    metadata["provenance"] = data["provenance"]
    return Document(
        id=sample.id,
        text=sample.text,
        title=sample.title,
        category=sample.success_score,
        metadata=metadata,
    )


def documents_from_tuples(items: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[Document]:
    """Any (id, text, metadata) set: `title` and `category` are lifted out of metadata when present."""
    docs = []
    for doc_id, text, metadata in items:
        meta = dict(metadata)
        title = meta.get("title")
        category = meta.get("category")
        docs.append(
            Document(
                id=str(doc_id),
                text=text,
                title=str(title) if title else None,
                category=str(category) if category is not None else None,
                metadata=meta,
            )
        )
    return docs


@dataclass
class LoadedExport:
    """The documents read from a RAG export, and the rows that could not be indexed (with why)."""

    documents: list[Document]
    rows_in: int
    quarantined: list[QuarantineRecord]
    duplicates: int


def iter_export_rows(path: Path) -> Iterator[tuple[int, int, bytes | None, bool]]:
    for raw in iter_raw_lines(path):
        if raw.data is not None and not raw.data.strip():
            continue
        yield raw.offset, raw.number, raw.data, raw.terminated


def load_rag_export(path: Path, *, relative_name: str) -> LoadedExport:
    """Read ROOT/exports/rag/playbooks.jsonl; bad rows become QuarantineRecords, never exceptions."""
    documents: list[Document] = []
    quarantined: list[QuarantineRecord] = []
    seen: set[str] = set()
    rows_in = 0
    duplicates = 0
    if not path.exists():
        return LoadedExport(documents=[], rows_in=0, quarantined=[], duplicates=0)

    def bad(offset: int, number: int, reason: QuarantineReason, error: str, excerpt: bytes | None) -> None:
        quarantined.append(
            QuarantineRecord(
                stage="index",
                source="rag",
                reason=reason,
                errors=[error],
                source_ref=SourceRef(source_file=relative_name, line_offset=offset, line_number=number),
                excerpt=excerpt[:200].decode("utf-8", "replace") if excerpt else None,
            )
        )

    for offset, number, data, terminated in iter_export_rows(path):
        rows_in += 1
        if not terminated:
            bad(offset, number, QuarantineReason.TORN_LINE, "last line has no newline (torn write)", data)
            continue
        if data is None:
            bad(offset, number, QuarantineReason.LINE_TOO_LONG, "line too long", None)
            continue
        try:
            row = loads(data)
        except ValueError as exc:
            bad(offset, number, QuarantineReason.MALFORMED_JSON, f"not JSON: {exc}", data)
            continue
        try:
            sample = RagSample.model_validate(row)
        except ValidationError as exc:
            bad(offset, number, QuarantineReason.SCHEMA_VIOLATION, f"not a RagSample: {exc.errors()[0]['msg']}", data)
            continue
        if sample.id in seen:
            duplicates += 1
            bad(offset, number, QuarantineReason.DUPLICATE_ID, f"id {sample.id} already seen earlier in the export", data)
            continue
        seen.add(sample.id)
        documents.append(from_rag_sample(sample))
    return LoadedExport(documents=documents, rows_in=rows_in, quarantined=quarantined, duplicates=duplicates)
