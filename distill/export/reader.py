"""Read scored runs and join each one to the evidence revision it scored.

The join key is (evidence_run_id, provenance.sig_hash): a run_id can have several revisions
(the source row changed), and a score only describes the revision whose hash it carries.
Every scored-run line becomes exactly one ReaderItem, so exporters can account for every
input row (conservation) without re-reading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import ValidationError

from distill.hashing import LineEndHash, PrefixHash
from distill.jsonl import RawLine, iter_raw_lines, loads, read_line_at
from distill.records import EvidenceRecord, Provenance, QuarantineReason, ScoredRun, SourceRef
from distill.workspace import Workspace, iter_partition_files

EXCERPT_CHARS = 200


class EvidenceLookup(Protocol):
    """Where a scored line finds its evidence revision (EvidenceIndex, or a checkpoint's view)."""

    def get(self, mirror: Path, run_id: str, sig: str) -> EvidenceRecord | None: ...

    def revisions(self, run_id: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Joined:
    """A scored run with the evidence revision it scored."""

    scored: ScoredRun
    evidence: EvidenceRecord
    scored_file: str
    scored_line: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.evidence.run_id, self.evidence.provenance.sig_hash)

    @property
    def source(self) -> str:
        return self.scored.source

    def ref(self) -> SourceRef:
        return source_ref(self.evidence.provenance)


def source_ref(p: Provenance) -> SourceRef:
    return SourceRef(source_file=p.source_file, line_offset=p.line_offset, line_number=p.line_number,
                     sig_hash=p.sig_hash)


@dataclass(frozen=True, slots=True)
class Broken:
    """A scored-run line that cannot be exported at all, and why."""

    source: str
    reason: QuarantineReason
    errors: list[str]
    ref: SourceRef
    record_id: str | None = None
    excerpt: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


ReaderItem = Joined | Broken


def evidence_records(path: Path, start: int = 0, on_chunk: Callable[[bytes], None] | None = None,
                     ) -> Iterator[tuple[int, EvidenceRecord]]:
    """(byte offset, record) for every line of `path` from `start` that is an EvidenceRecord;
    lines that do not parse as one are not data."""
    for raw in iter_raw_lines(path, start=start, on_chunk=on_chunk):
        if not (raw.terminated and raw.data and raw.data.strip()):
            continue
        try:
            ev = EvidenceRecord.model_validate(loads(raw.data))
        except (ValueError, ValidationError):
            continue
        yield raw.offset, ev


class EvidenceIndex:
    """Evidence by (run_id, sig_hash), loaded per partition file on demand.

    The mirror partition (same YYYY/MM/DD/<source>.jsonl under evidence/) is tried first; a
    miss falls back to every evidence file once, so a scored run whose evidence landed in
    another partition still joins. Lines that do not parse as EvidenceRecord are not data.

    Memory holds where records are, never the records: scored partitions are read in order and
    mirror evidence partitions 1:1, so only the current mirror's offsets are held (a record is
    validated when its scored line asks for it, as the mirror is read forward or read back by
    offset: one busy day's partition can be most of the workspace). The fallback likewise keeps
    (file, byte offset) per record.
    """

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._current: EvidenceOffsets | None = None  # the mirror partition held now
        self._global: dict[tuple[str, str], tuple[Path, int]] | None = None
        self._revisions: dict[str, list[str]] | None = None
        self._read: set[Path] = set()
        self.files_read: list[Path] = []
        self.fallback_used = False  # a lookup went past the mirror partition (checkpoints care)
        self._read_hash: LineEndHash | None = None  # what the held mirror's reader has hashed

    def note_read(self, path: Path) -> None:
        if path not in self._read:
            self._read.add(path)
            self.files_read.append(path)

    def _load(self, path: Path) -> EvidenceOffsets:
        if self._current is not None and self._current.path == path:
            return self._current
        if self._current is not None:  # drop the previous partition before reading the next one
            self._current.close()
        self._current = None
        self._read_hash = None
        if path.is_file():
            self.note_read(path)
            self._read_hash = LineEndHash(PrefixHash())  # the export checkpoints keep where each mirror's prefix ends
            offsets = EvidenceOffsets(path, on_chunk=self._read_hash)
        else:
            offsets = EvidenceOffsets(path)
        self._current = offsets
        return offsets

    @property
    def loaded_to(self) -> tuple[int, str] | None:
        """(end, sha256) of the whole lines of the mirror held now, read to its end."""
        if self._current is None or self._read_hash is None:
            return None
        self._current.finish()
        sha = self._read_hash.hexdigest(self._current.path)
        return (self._read_hash.end, sha) if sha is not None else None

    def elsewhere(self, run_id: str, sig: str) -> EvidenceRecord | None:
        """The revision from any evidence partition (what a miss in the mirror falls back to)."""
        self.fallback_used = True
        where = self._load_all().get((run_id, sig))
        if where is None:
            return None
        path, offset = where
        try:
            return EvidenceRecord.model_validate(loads(read_line_at(path, offset)))
        except (OSError, ValueError, ValidationError):
            return None  # the file changed under us since it was indexed

    def _load_all(self) -> dict[tuple[str, str], tuple[Path, int]]:
        if self._global is None:
            merged: dict[tuple[str, str], tuple[Path, int]] = {}
            for path in iter_partition_files(self._ws.evidence_dir):
                if not path.is_file():
                    continue
                self.note_read(path)
                for offset, ev in evidence_records(path):
                    merged.setdefault((ev.run_id, ev.provenance.sig_hash), (path, offset))
            self._global = merged
            revisions: dict[str, list[str]] = {}
            for run_id, sig in merged:
                revisions.setdefault(run_id, []).append(sig)
            self._revisions = {k: sorted(v) for k, v in revisions.items()}
        return self._global

    def mirror_offsets(self, mirror: Path) -> list[tuple[tuple[str, str], int]] | None:
        """Every key a line of `mirror` names, with its first line's offset, when it is the
        partition held now."""
        if self._current is None or self._current.path != mirror:
            return None
        return self._current.first_offsets()

    def get(self, mirror: Path, run_id: str, sig: str) -> EvidenceRecord | None:
        found = self._load(mirror).get((run_id, sig))
        return found if found is not None else self.elsewhere(run_id, sig)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()

    def revisions(self, run_id: str) -> list[str]:
        self._load_all()
        assert self._revisions is not None
        return self._revisions.get(run_id, [])


def keyed_evidence_lines(path: Path, *, start: int = 0, end: int | None = None,
                         on_chunk: Callable[[bytes], None] | None = None,
                         ) -> Generator[tuple[int, tuple[Any, Any], dict[str, Any]], None, None]:
    """(offset, (run_id, sig_hash) as the JSON has them, the parsed line) for every line of an
    evidence file (those from byte `start` that start before byte `end`) that is a JSON object
    with a provenance object: a lookup by key parses every line but validates only the lines
    whose key matches."""
    for raw in iter_raw_lines(path, start=start, on_chunk=on_chunk):
        if end is not None and raw.offset >= end:
            return
        if not (raw.terminated and raw.data and raw.data.strip()):
            continue
        try:
            row = loads(raw.data)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(prov := row.get("provenance"), dict):
            yield raw.offset, (row.get("run_id"), prov.get("sig_hash")), row


class EvidenceOffsets:
    """Where each key's lines are in one evidence file (from byte `start`, those starting before
    `end`), found by parsing the lines as plain JSON; memory holds offsets whatever the file's
    size, and a lookup validates only that key's lines, so the first one that is a valid
    EvidenceRecord is the record a load of every record would have kept.

    The file is read forward only as far as lookups need: scored partitions mirror their evidence
    partition line for line, so the line a lookup needs is usually the next one, and its parsed
    JSON is validated at once instead of being read back and parsed again. A key asked again or
    asked out of order is read back by offset. `finish` reads the rest (every key, and the whole
    file through `on_chunk`)."""

    def __init__(self, path: Path, *, start: int = 0, end: int | None = None,
                 on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.path = path
        self._where: dict[tuple[str, str], int | list[int]] = {}
        self._fh: IO[bytes] | None = None
        self._ahead: Generator[tuple[int, tuple[Any, Any], dict[str, Any]], None, None] | None = (
            keyed_evidence_lines(path, start=start, end=end, on_chunk=on_chunk) if path.is_file() else None)

    def _next(self) -> tuple[int, tuple[str, str], dict[str, Any]] | None:
        """The next line that names a key, noted; None at the end of the file."""
        while self._ahead is not None:
            found = next(self._ahead, None)
            if found is None:
                self._ahead = None
                break
            offset, key, row = found
            if isinstance(key[0], str) and isinstance(key[1], str):
                self._note(key, offset)
                return offset, key, row
        return None

    def _note(self, key: tuple[str, str], offset: int) -> None:
        found = self._where.get(key)
        if found is None:
            self._where[key] = offset
        elif isinstance(found, int):
            self._where[key] = [found, offset]
        else:
            found.append(offset)

    def finish(self) -> None:
        """Read the rest of the file (every key noted; `on_chunk` has seen every byte)."""
        while self._next() is not None:
            pass

    def keys(self) -> list[tuple[str, str]]:
        """Every key a line names (a line that then fails validation included: `get` finds no
        record for it, as a lookup of a key no line names finds none)."""
        self.finish()
        return list(self._where)

    def first_offsets(self) -> list[tuple[tuple[str, str], int]]:
        """Every key a line names with the offset of the first such line, in file order."""
        self.finish()
        return [(key, found if isinstance(found, int) else found[0]) for key, found in self._where.items()]

    def get(self, key: tuple[str, str]) -> EvidenceRecord | None:
        found = self._where.get(key)
        for offset in () if found is None else (found,) if isinstance(found, int) else found:
            try:
                ev = EvidenceRecord.model_validate(loads(self._line(offset)))
            except (OSError, ValueError, ValidationError):
                continue
            if (ev.run_id, ev.provenance.sig_hash) == key:
                return ev
        return _first_record(iter(self._next, None), key)  # the lines not read yet, in file order

    def _line(self, offset: int) -> bytes:
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(offset)
        line = self._fh.readline()
        return line[:-1] if line.endswith(b"\n") else line

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._ahead is not None:
            self._ahead.close()  # the reader's file
            self._ahead = None


def mirror_text(ws: Workspace, scored_file: str, key: tuple[str, str]) -> str | None:
    """The text of the evidence revision `key` as the join finds it in the mirror of a scored
    partition (ROOT-relative `scored_file`): the first valid record with that key. A line is
    validated only when its key matches, so one lookup costs a JSON parse of the partition."""
    try:
        part = (ws.root / scored_file).relative_to(ws.scored_dir)
    except ValueError:
        return None  # not a scored partition (a damaged checkpoint): the caller says so
    if ".." in part.parts or not part.parts:
        return None
    try:
        ev = _first_record(keyed_evidence_lines(ws.evidence_dir / part), key)
    except OSError:
        return None  # no such mirror (a damaged checkpoint named it)
    return ev.text if ev is not None else None


def _first_record(lines: Iterable[tuple[int, tuple[Any, Any], dict[str, Any]]],
                  key: tuple[str, str]) -> EvidenceRecord | None:
    """The first of these parsed evidence lines that names `key` and is a valid EvidenceRecord of
    it (a line is validated only when its key matches)."""
    for _, found, row in lines:
        if found != key:
            continue
        try:
            ev = EvidenceRecord.model_validate(row)
        except ValidationError:
            continue
        if (ev.run_id, ev.provenance.sig_hash) == key:
            return ev
    return None


def rel_path(ws: Workspace, path: Path) -> str:
    """ROOT-relative POSIX path; paths found by walking ROOT need no resolve()."""
    try:
        return path.relative_to(ws.root).as_posix()
    except ValueError:
        return ws.relative(path)


def _excerpt(data: bytes) -> str:
    return data[:EXCERPT_CHARS].decode("utf-8", errors="replace")


def _classify_invalid(row: Any, exc: ValidationError) -> tuple[QuarantineReason, list[str]]:
    """Map a ScoredRun validation failure onto the export taxonomy (provenance first)."""
    if isinstance(row, dict):
        prov = row.get("provenance")
        if not isinstance(prov, dict) or not prov.get("sig_hash") or not prov.get("source_file"):
            return QuarantineReason.MISSING_PROVENANCE, ["scored run has no usable provenance (source_file + sig_hash)"]
        if not row.get("evidence_run_id"):
            return QuarantineReason.MISSING_SOURCE_RUN_ID, ["scored run has no evidence_run_id"]
    errors = [f"{'.'.join(str(p) for p in e['loc']) or '<row>'}: {e['msg']}" for e in exc.errors()[:5]]
    return QuarantineReason.SCHEMA_VIOLATION, errors or ["not a ScoredRun"]


def iter_scored(ws: Workspace, index: EvidenceIndex) -> Iterator[ReaderItem]:
    """Every line of every scored-run partition (sorted), joined or explained."""
    for path in iter_partition_files(ws.scored_dir):
        yield from (item for _, item in iter_scored_lines(ws, index, path))


def iter_scored_lines(
    ws: Workspace,
    index: EvidenceLookup,
    path: Path,
    *,
    start: int = 0,
    lines_before: int = 0,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Iterator[tuple[RawLine, ReaderItem]]:
    """Every line of one scored-run partition from `start` (a line start), joined or explained,
    with its physical line (the export checkpoints digest it)."""
    line = ScoredLineReader(ws, index, path)
    for raw in iter_raw_lines(path, start=start, lines_before=lines_before, on_chunk=on_chunk):
        item = line.read(raw)
        if item is not None:
            yield raw, item


def is_blank(raw: RawLine) -> bool:
    """A blank line is not a row (no item, no quarantine row)."""
    return raw.terminated and raw.data is not None and not raw.data.strip()


class ScoredLineReader:
    """Turns one physical line of a scored partition into what the exporters read: joined with its
    evidence revision, or the reason it cannot be."""

    def __init__(self, ws: Workspace, index: EvidenceLookup, path: Path) -> None:
        self.index = index
        self.rel = rel_path(ws, path)
        self.source = path.stem
        self.mirror = ws.evidence_dir / path.relative_to(ws.scored_dir)

    def read(self, raw: RawLine) -> ReaderItem | None:
        """The line's item; None for a blank line."""
        rel, source = self.rel, self.source
        if is_blank(raw):
            return None
        ref = SourceRef(source_file=rel, line_offset=raw.offset, line_number=raw.number)
        if not raw.terminated:
            return Broken(source, QuarantineReason.TORN_LINE, ["torn last line (no newline)"], ref,
                          excerpt=_excerpt(raw.data or b""))
        if raw.data is None:
            return Broken(source, QuarantineReason.LINE_TOO_LONG, ["scored-run line too long"], ref)
        try:
            row = loads(raw.data)
        except ValueError as exc:
            return Broken(source, QuarantineReason.SCHEMA_VIOLATION, [f"scored run is not JSON: {exc}"[:200]],
                          ref, excerpt=_excerpt(raw.data))
        try:
            scored = ScoredRun.model_validate(row)
        except ValidationError as exc:
            reason, errors = _classify_invalid(row, exc)
            rid = row.get("evidence_run_id") if isinstance(row, dict) else None
            return Broken(source, reason, errors, ref, record_id=rid if isinstance(rid, str) else None,
                          excerpt=_excerpt(raw.data))
        sig = scored.provenance.sig_hash
        ev = self.index.get(self.mirror, scored.evidence_run_id, sig)
        if ev is None:
            known = self.index.revisions(scored.evidence_run_id)
            msg = (
                f"no evidence revision of run {scored.evidence_run_id} with sig_hash {sig[:12]}"
                f" (known revisions: {', '.join(s[:12] for s in known)})"
                if known
                else f"evidence run {scored.evidence_run_id} not found"
            )
            p = scored.provenance
            return Broken(
                scored.source,
                QuarantineReason.MISSING_SOURCE_RUN_ID,
                [msg],
                SourceRef(source_file=p.source_file, line_offset=p.line_offset, line_number=p.line_number,
                          sig_hash=p.sig_hash),
                record_id=scored.evidence_run_id,
                detail={"scored_file": rel, "scored_line": raw.number, "category": scored.category.value},
            )
        return Joined(scored=scored, evidence=ev, scored_file=rel, scored_line=raw.number)
