"""The source adapter contract.

A source turns its input (a JSONL stream, a directory of trajectories...) into a stream of
items, exactly one per input unit: an EvidenceRecord, or a QuarantineRecord saying why that
unit could not become evidence. Collect counts on that one-to-one accounting (read = written
+ quarantined + deduped), so an adapter never drops a unit silently and never raises on bad data.

JSONL adapters only write `convert(row, ctx)`: `read_jsonl` does the line reading, decoding,
parsing and error accounting for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from distill.config import Settings
from distill.errors import RowRejected
from distill.hashing import sig_hash
from distill.jsonl import UTF16_BOMS, ReadProgress, iter_raw_lines, loads, utf16_problem
from distill.records import EvidenceRecord, Provenance, QuarantineReason, QuarantineRecord, SourceRef
from distill.records.common import hidden_text_problem
from distill.workspace import Workspace, text_name

SourceItem = EvidenceRecord | QuarantineRecord
EXCERPT_CHARS = 200
UTF8_BOM = b"\xef\xbb\xbf"
"""A byte-order mark some editors write at the start of a file: not part of the first row."""


class Source(Protocol):
    name: str

    def inputs(self, ws: Workspace) -> list[Path]:
        """The files this source reads (for receipts' input hashes). Missing files are omitted."""
        ...

    def read(self, ws: Workspace, settings: Settings) -> Iterator[SourceItem]:
        """One item per input unit, never an exception for bad data."""
        ...


@dataclass(frozen=True, slots=True)
class RowContext:
    """What a converter knows about the row besides its content."""

    source: str
    source_file: str
    line_offset: int
    line_number: int
    sig_hash: str

    def provenance(self, recorded_at: datetime) -> Provenance:
        return Provenance(
            source_file=self.source_file,
            line_offset=self.line_offset,
            line_number=self.line_number,
            sig_hash=self.sig_hash,
            recorded_at=recorded_at,
        )

    def ref(self) -> SourceRef:
        return SourceRef(
            source_file=self.source_file,
            line_offset=self.line_offset,
            line_number=self.line_number,
            sig_hash=self.sig_hash,
        )


Converter = Callable[[dict[str, Any], RowContext], EvidenceRecord]


def quarantine(
    *,
    source: str,
    reason: QuarantineReason,
    error: str,
    ref: SourceRef,
    excerpt: bytes | str | None = None,
    record_id: str | None = None,
    stage: str = "collect",
) -> QuarantineRecord:
    if isinstance(excerpt, bytes):
        excerpt = excerpt[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    elif isinstance(excerpt, str):
        excerpt = excerpt[:EXCERPT_CHARS]
    return QuarantineRecord(
        stage=stage,
        source=source,
        reason=reason,
        errors=[error or reason.value],
        record_id=record_id,
        source_ref=ref,
        excerpt=excerpt,
    )


def read_jsonl(
    path: Path,
    *,
    source: str,
    ws: Workspace,
    settings: Settings,
    convert: Converter,
    resume_at: ReadProgress | None = None,
    progress: ReadProgress | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Iterator[SourceItem]:
    """Every line of one JSONL source file -> evidence or a reasoned quarantine row.

    Blank lines are not input units and are not yielded. Everything else is: too long,
    not UTF-8, torn (unterminated and unparseable), not JSON, not an object, or rejected by
    the converter (RowRejected or a pydantic ValidationError). `resume_at` starts after the
    lines an earlier read covered; `progress` is kept up to date (see ReadProgress).
    """
    rel = ws.relative(path)
    max_bytes = settings.collect.max_line_bytes
    start = resume_at or ReadProgress()
    if progress is not None:
        progress.end, progress.lines = start.end, start.lines
    try:
        lines = iter_raw_lines(path, max_bytes, start=start.end, lines_before=start.lines, on_chunk=on_chunk)
        for raw in lines:
            if progress is not None and raw.terminated:
                progress.end, progress.lines = raw.offset + raw.length + 1, raw.number
            base_ref = SourceRef(source_file=rel, line_offset=raw.offset, line_number=raw.number)
            if raw.data is None:
                yield quarantine(
                    source=source,
                    reason=QuarantineReason.LINE_TOO_LONG,
                    error=f"line is {raw.length} bytes, limit collect.max_line_bytes={max_bytes}",
                    ref=base_ref,
                )
                continue
            if not raw.data.strip():
                continue
            data = raw.data[len(UTF8_BOM):] if raw.offset == 0 and raw.data.startswith(UTF8_BOM) else raw.data
            if b"\x00" in data or (raw.offset == 0 and data.startswith(UTF16_BOMS)):
                problem = utf16_problem(data)
                if problem is not None:
                    yield quarantine(source=source, reason=QuarantineReason.INVALID_UTF8, error=problem, ref=base_ref,
                                     excerpt=raw.data)
                    continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield quarantine(
                    source=source,
                    reason=QuarantineReason.INVALID_UTF8,
                    error=f"not UTF-8 at byte {exc.start}: {exc.reason}",
                    ref=base_ref,
                    excerpt=raw.data,
                )
                continue
            try:
                row = loads(text)
            except (ValueError, RecursionError) as exc:
                reason = QuarantineReason.MALFORMED_JSON if raw.terminated else QuarantineReason.TORN_LINE
                detail = "unterminated last line (torn write?)" if not raw.terminated else "not JSON"
                yield quarantine(
                    source=source, reason=reason, error=f"{detail}: {str(exc)[:160]}", ref=base_ref, excerpt=text
                )
                continue
            if not isinstance(row, dict):
                yield quarantine(
                    source=source,
                    reason=QuarantineReason.NOT_AN_OBJECT,
                    error=f"row is a JSON {type(row).__name__}, expected an object",
                    ref=base_ref,
                    excerpt=text,
                )
                continue
            try:
                sig = sig_hash(row)
            except (TypeError, ValueError, RecursionError) as exc:
                yield quarantine(
                    source=source,
                    reason=QuarantineReason.MALFORMED_JSON,
                    error=f"row cannot be canonicalised: {str(exc)[:160]}",
                    ref=base_ref,
                    excerpt=text,
                )
                continue
            ctx = RowContext(source, rel, raw.offset, raw.number, sig)
            yield convert_row(row, ctx, convert, excerpt=text)
    except OSError as exc:
        if progress is not None:
            progress.failed = True
        yield quarantine(
            source=source,
            reason=QuarantineReason.UNREADABLE_SOURCE,
            error=f"cannot read {rel}: {exc.strerror or exc}",
            ref=SourceRef(source_file=rel),
        )


def refuse_hidden_text(item: SourceItem, *, source: str, ref: SourceRef, excerpt: bytes | str) -> SourceItem:
    """A converted row, or its quarantine row when its text or instruction hides words
    (records.common.hidden_text_problem): every source's rows go through this one check."""
    if not isinstance(item, EvidenceRecord):
        return item
    for name, value in (("text", item.text), ("instruction", item.instruction)):
        if value is not None and (problem := hidden_text_problem(value)) is not None:
            return quarantine(source=source, reason=QuarantineReason.HIDDEN_TEXT, error=f"{name}: {problem}",
                              ref=ref, excerpt=excerpt, record_id=item.run_id)
    return item


def convert_row(row: dict[str, Any], ctx: RowContext, convert: Converter, *, excerpt: str) -> SourceItem:
    """Run a converter, turning its refusals into quarantine rows (never an exception)."""
    try:
        return refuse_hidden_text(convert(row, ctx), source=ctx.source, ref=ctx.ref(), excerpt=excerpt)
    except RowRejected as exc:
        return quarantine(source=ctx.source, reason=exc.reason, error=exc.message, ref=ctx.ref(), excerpt=excerpt)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        kind = str(first.get("type", ""))
        reason = (
            QuarantineReason.MISSING_FIELD if kind == "missing" else QuarantineReason.WRONG_TYPE
        )
        return quarantine(
            source=ctx.source,
            reason=reason,
            error=f"{loc or 'row'}: {first.get('msg', 'invalid')}"[:300],
            ref=ctx.ref(),
            excerpt=excerpt,
        )
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError, ArithmeticError) as exc:
        # A converter bug on an unexpected shape still must not crash collect.
        return quarantine(
            source=ctx.source,
            reason=QuarantineReason.WRONG_TYPE,
            error=f"unexpected row shape: {type(exc).__name__}: {str(exc)[:200]}",
            ref=ctx.ref(),
            excerpt=excerpt,
        )


@dataclass(frozen=True)
class JsonlStream:
    """A source that is one JSONL file (or a glob of them) under ROOT/_kb, plus a converter."""

    name: str
    pattern: str
    convert: Converter

    def inputs(self, ws: Workspace) -> list[Path]:
        return sorted(p for p in ws.kb_dir.glob(self.pattern) if p.is_file() and text_name(p.relative_to(ws.kb_dir)))

    def read(self, ws: Workspace, settings: Settings) -> Iterator[SourceItem]:
        for path in self.inputs(ws):
            yield from read_jsonl(path, source=self.name, ws=ws, settings=settings, convert=self.convert)
