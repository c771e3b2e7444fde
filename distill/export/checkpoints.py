"""Export checkpoints: what each scored partition's lines gave, so that a run after score appended
or re-scored rows joins, decides and gates only those rows.

Per scored partition: the length and hash of its whole-line prefix, the same of the mirror
evidence partition it joined against with the digests of that prefix's valid evidence keys, and
one entry per scored line with a digest of that line. RAG/SFT keep a `quarantine.Entry` (its
outcome, the quarantine line it produced, its sample id); the preference export keeps what its
first pass made of the line (`preference.Pass1Entry`: the row pairing needs, or its refusal;
pairing is redone for the tasks a change touches, see `kept_decisions`). A checkpoint is trusted only when the `distill` code, the [export]
settings, the export's flags, the repository tree and benchmark files the gates read and the secret
scanner's version are the same (one basis for the file), the partition's entries are the bytes
written (their xxh3-128 follows them: a damaged line is no checkpoint, so a reader may trust what an
entry says), the mirror still starts with exactly the hashed bytes, and no line of the prefix needed
evidence from another partition. Then:

- the scored file still starts with the hashed bytes and the exporter's `can_replay` accepts the
  entries (RowExporter: every shipped candidate still in the export, no id repeated): the entries
  are replayed and the lines after the prefix read (a grown partition's next checkpoint copies
  their JSON as it was written);
- otherwise (score rewrote the partition: late verdicts re-scored some of its runs) each line is
  compared with its digest (its bytes and line number, and its byte offset for a line that could
  not be joined, whose quarantine row names the offset): runs of unchanged lines are replayed when
  the exporter accepts them, every other line is read.

Lines that are read find their evidence in the mirror's checkpointed prefix when it holds their
key (read at the offset of the first line naming it), else in the mirror's appended lines.
Anything else reads the partition from the start; `distill run --force` deletes the file first
(`Stage.caches`).
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from pydantic import ValidationError

from distill.checkpoint_file import (
    ENTRIES_HEAD,
    ENTRIES_KEY,
    ENTRY_LENGTHS_KEY,
    CheckpointFile,
    Entries,
    decode_lengths,
    entries_bytes,
)
from distill.config import Settings
from distill.errors import UsageError
from distill.export.entry_summary import PartitionSummary
from distill.export.reader import (
    Broken,
    EvidenceIndex,
    EvidenceOffsets,
    ReaderItem,
    ScoredLineReader,
    is_blank,
    iter_scored_lines,
    rel_path,
)
from distill.export.scored_index import digest_position, key_digest
from distill.hashing import LineEndHash, PrefixHash, WholeFileDigests, canonical_json, file_digest, file_size, sha256_hex
from distill.jsonl import RawLine, dumps, iter_raw_lines, line_at, loads
from distill.receipts import code_fingerprint, digest_tree_listing
from distill.records import EvidenceRecord
from distill.workspace import Workspace

EXPORT_CHECKPOINT_VERSION = 9  # 2: a digest per line, so a partition rewritten in place replays its unchanged lines; 3: prefixes hashed with xxh3-128; 4: the entries' digest; 5: each mirror key's first offset; 6: each entry's length; 7: RAG/SFT quarantine lines read from the last quarantine file; 8: RAG/SFT partition summaries; 9: their stale ids' digests
LINE_DIGEST = 16  # bytes per line digest
NO_DIGEST = bytes(LINE_DIGEST)  # a line the reader did not hold (too long): never taken as unchanged
REPLAY_BATCH = 4096  # unchanged lines of a rewritten partition held before they are replayed
RAW_ENTRIES = "entries_raw"  # what `get` adds: the entries' JSON as written
KEEP_RAW_BYTES = 32 << 20  # a partition's entries kept as JSON beside their parsed form up to this size


class PartitionExporter(Protocol):
    """What `export_partition` drives: RAG/SFT's RowExporter, the preference export's first pass."""

    def feed(self, item: ReaderItem) -> None: ...

    def end_partition(self) -> Entries | None:
        """The entries of the rows since the last call, as `JsonEntries.take` hands them out."""
        ...

    def can_replay(self, entries: Sequence[Any]) -> bool: ...

    def replay(self, entries: Sequence[Any], *, record: bool = True) -> None:
        """`record=False`: the entries are not handed over again by `end_partition` (the caller
        carries the partition's checkpoint over as it is)."""
        ...


def _digest(raw: RawLine, broken: bool) -> bytes:
    """A line's digest: its bytes and number, and for a line the reader could not join also its
    byte offset (that line's quarantine row names the offset)."""
    if raw.data is None:
        return NO_DIGEST
    tag = b"B%d:%d\n" % (raw.number, raw.offset) if broken else b"J%d\n" % raw.number
    h = hashlib.blake2b(tag, digest_size=LINE_DIGEST)
    h.update(raw.data)
    return h.digest()


def line_digest(raw: RawLine, item: ReaderItem) -> bytes:
    """What a line's checkpoint entry depends on besides its evidence (and the export basis)."""
    return _digest(raw, isinstance(item, Broken))


def _unchanged(raw: RawLine, recorded: bytes) -> bool:
    if not raw.terminated or raw.data is None or recorded == NO_DIGEST:
        return False
    return recorded == _digest(raw, False) or recorded == _digest(raw, True)


MIN_LINE = 2  # a quarantine line is a JSON object: `{}` at least
QUARANTINE_KEY = "quarantine"  # in the header (RAG/SFT): the quarantine file the entries' lines are in


def _row_entries(entries: Any) -> bool:
    """RowExporter's entries: lists of 7 fields (quarantine.Entry), the last one the length of the
    row's quarantine line or None."""
    return isinstance(entries, list) and all(
        isinstance(e, list) and len(e) == 7 and (e[6] is None or (type(e[6]) is int and e[6] >= MIN_LINE))
        for e in entries)


class LastQuarantine:
    """The quarantine file the run that wrote the RAG/SFT checkpoints left. A replayed row's
    quarantine line is read from there instead of being kept in its checkpoint entry (which keeps
    its length): the lines exist once on disk, and a partition whose rows are replayed copies its
    lines as one block. Trusted only while the file is the bytes that run wrote (the size and
    xxh3-128 the checkpoint header holds); the file is held open from that check on (the run
    replaces it only when it is done)."""

    def __init__(self, fh: IO[bytes], size: int, blocks: dict[str, int]) -> None:
        self._fh, self.size, self._blocks = fh, size, blocks

    @classmethod
    def of(cls, path: Path, recorded: Any, known: WholeFileDigests | None = None) -> LastQuarantine | None:
        """`recorded`: what `ExportCheckpoints.save` wrote ({size, hash, blocks}), None when absent;
        `known`: whole-file digests known without a read."""
        if not isinstance(recorded, dict):
            return None
        size, sha, blocks = recorded.get("size"), recorded.get("hash"), recorded.get("blocks")
        if (type(size) is not int or not isinstance(sha, str) or not isinstance(blocks, dict)
                or not all(type(at) is int and 0 <= at <= size for at in blocks.values())):
            return None
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError:
            return None
        if file_digest(path, known) != (size, sha) or os.fstat(fh.fileno()).st_size != size:
            fh.close()
            return None
        return cls(fh, size, blocks)

    def block(self, rel: str) -> int | None:
        """Where the partition's quarantine lines start."""
        return self._blocks.get(rel)

    def read(self, offset: int, length: int) -> bytes:
        self._fh.seek(offset)
        data = self._fh.read(length)
        if len(data) != length:
            raise UsageError(f"{self._fh.name} changed while it was read; `distill run --force` starts the exports "
                             f"from their inputs")
        return data

    def close(self) -> None:
        self._fh.close()


class RowEntries(Sequence[Any]):
    """A RAG/SFT partition's checkpoint entries (or a run of them), with their quarantine lines in
    the last quarantine file: an entry's line follows the lines of the entries before it in the
    partition's block, so a run of entries has its lines as one read. The whole partition's are
    checked, counted and copied from its summary (entry_summary) without parsing an entry; a run
    inside a rewritten partition parses them and sums its own."""

    def __init__(self, entries: LazyEntries, source: LastQuarantine, block: int, summary: PartitionSummary,
                 start: int = 0, stop: int | None = None, ends: np.ndarray | None = None) -> None:
        self._entries, self._source, self._block, self._whole = entries, source, block, summary
        self._start, self._stop = start, len(entries) if stop is None else stop
        self._ends = ends  # where each entry's line ends in the block, once a run of them is asked for
        self._summary = summary if start == 0 and self._stop == len(entries) else None

    @classmethod
    def of(cls, entries: LazyEntries, source: LastQuarantine, block: int, summary: PartitionSummary) -> RowEntries | None:
        """None when the entries' lines do not fit in the file from `block` on."""
        return cls(entries, source, block, summary) if block + summary.line_bytes <= source.size else None

    def summary(self) -> PartitionSummary:
        if self._summary is None:
            self._summary = PartitionSummary.of(self)
        return self._summary

    def _line_ends(self) -> np.ndarray:
        if self._ends is None:
            entries = self._entries.parsed()
            sizes = np.fromiter((0 if e[6] is None else e[6] + 1 for e in entries), dtype=np.int64, count=len(entries))
            self._ends = np.concatenate(([0], np.cumsum(sizes)))
            if int(self._ends[-1]) != self._whole.line_bytes:
                raise UsageError(_NOT_OURS)
        return self._ends

    def lines(self) -> bytes:
        """The lines of these entries' rows, joined by newlines (no newline after the last)."""
        if self._start == 0 and self._stop == len(self._entries):
            first, last, count = 0, self._whole.line_bytes, self._whole.lines
        else:
            ends = self._line_ends()
            first, last = int(ends[self._start]), int(ends[self._stop])
            count = int(np.count_nonzero(np.diff(ends[self._start:self._stop + 1])))
        if first == last:
            return b""
        data = self._source.read(self._block + first, last - first)
        if not data.endswith(b"\n") or data.count(b"\n") != count:
            raise UsageError("an export's quarantine file does not hold the lines its checkpoint says; "
                             "`distill run --force` starts the exports from their inputs")
        return data[:-1]

    def json(self) -> Iterator[bytes]:
        """Each entry's JSON as the checkpoint holds it."""
        return _Span(self._entries, self._start, self._stop).json()

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, _ = i.indices(len(self))
            return RowEntries(self._entries, self._source, self._block, self._whole, self._start + start,
                              self._start + max(start, stop), self._line_ends())
        k = i + len(self) if i < 0 else i
        if not 0 <= k < len(self):
            raise IndexError(i)
        return self._entries.parsed()[self._start + k]

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self._entries.parsed(), self._start, self._stop)


def _any_entries(entries: Any) -> bool:
    return isinstance(entries, list) and all(isinstance(e, list) and e for e in entries)


_NOT_OURS = ("an export checkpoint holds entries no run wrote; `distill run --force` starts the exports from "
             "their inputs")


class LazyEntries(Sequence[Any]):
    """A preference checkpoint's entries, parsed on first use: a replayed row whose decision the
    export keeps from the last run (distill.export.kept_decisions) needs none of them, only their
    count, and a row of a task a change touched is read back alone (each entry's length is kept:
    one entry parsed, not its partition's). Their bytes passed the entries' digest, so they are
    the bytes written; entries that still do not parse as written are a checkpoint no run of ours
    made."""

    def __init__(self, body: bytes, lengths: np.ndarray, valid: Callable[[Any], bool] | None = None) -> None:
        self._valid = valid if valid is not None else _any_entries  # what a list of these entries must be
        self._body: bytes | None = body
        self._count = len(lengths)
        self._lengths = lengths
        self._starts: np.ndarray | None = None
        self._list: list[Any] | None = None

    def parsed(self) -> list[Any]:
        if self._list is None:
            assert self._body is not None
            found = loads(b"[" + self._body + b"]")
            if not self._valid(found) or len(found) != self._count:
                raise UsageError(_NOT_OURS)
            self._list, self._body = found, None
        return self._list

    def _span(self, i: int) -> tuple[int, int]:
        if self._starts is None:
            self._starts = np.concatenate(([0], np.cumsum(self._lengths + 1)[:-1])) if self._count else self._lengths
        start = int(self._starts[i])
        return start, start + int(self._lengths[i])

    def json(self, i: int) -> bytes:
        """Entry i's JSON as written."""
        k = i + self._count if i < 0 else i
        if not 0 <= k < self._count:
            raise IndexError(i)
        if self._body is None:
            return dumps(self.parsed()[k])
        start, end = self._span(k)
        # the lengths add up to the body (checked when read); a span must still be one entry
        if self._body[start:start + 1] != b"[" or (end < len(self._body) and self._body[end:end + 1] != b","):
            raise UsageError(_NOT_OURS)
        return self._body[start:end]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return _Span(self, *i.indices(self._count)[:2])
        if self._list is not None:
            return self._list[i]
        found = loads(self.json(i))
        if not self._valid([found]):
            raise UsageError(_NOT_OURS)
        return found

    def __iter__(self) -> Iterator[Any]:
        return iter(self.parsed())


class _Span(Sequence[Any]):
    """Entries start .. stop of a LazyEntries, parsed (all of them) only when one is used."""

    def __init__(self, whole: LazyEntries, start: int, stop: int) -> None:
        self._whole, self._start, self._stop = whole, start, max(start, stop)

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._whole.parsed()[self._start:self._stop][i]
        k = i + len(self) if i < 0 else i
        if not 0 <= k < len(self):
            raise IndexError(i)
        return self._whole[self._start + k]  # one entry parsed, not a copy of the span per item

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self._whole.parsed(), self._start, self._stop)

    def json(self) -> Iterator[bytes]:
        """Each entry's JSON as written, without parsing them."""
        return (self._whole.json(k) for k in range(self._start, self._stop))


def entries_json(entries: Sequence[Any]) -> Iterator[bytes]:
    """The JSON of each entry, as a checkpoint wrote it: sliced from the checkpoint's bytes when
    the entries are still unparsed there, else written again."""
    if isinstance(entries, LazyEntries):
        return _Span(entries, 0, len(entries)).json()
    if isinstance(entries, _Span):
        return entries.json()
    return (dumps(e) for e in entries)


class MirrorKeys:
    """The keys the lines of a mirror's prefix name (16-byte digests, sorted, unique), each with
    the offset of the first line that names it: a line a rewritten partition needs is read there
    instead of parsing the mirror up to it."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        if keys.dtype != np.dtype("S16") or offsets.shape != keys.shape:
            raise ValueError("mirror keys and offsets do not match")
        self.keys, self.offsets = keys, offsets

    @classmethod
    def of(cls, digests: np.ndarray, offsets: np.ndarray) -> MirrorKeys:
        """From digests and offsets in file order (a key's first line comes first)."""
        keys, first = np.unique(digests.astype("S16"), return_index=True)
        return cls(keys, np.asarray(offsets, dtype=np.int64)[first])

    @classmethod
    def lines(cls, found: list[tuple[tuple[str, str], int]]) -> MirrorKeys:
        """From EvidenceOffsets.first_offsets."""
        return cls.of(np.array([key_digest(*k) for k, _ in found], dtype="S16").reshape(-1),
                      np.array([at for _, at in found], dtype=np.int64))

    def then(self, later: MirrorKeys) -> MirrorKeys:
        """These keys, then those of the lines after them (a key already here keeps its offset)."""
        return MirrorKeys.of(np.concatenate((self.keys, later.keys)), np.concatenate((self.offsets, later.offsets)))

    def offset(self, digest: bytes) -> int | None:
        """Where the first line naming this key starts, None when no line of the prefix names it."""
        at = digest_position(self.keys, digest)
        return None if at is None else int(self.offsets[at])

    def texts(self) -> dict[str, str]:
        return {"mirror_keys": base64.b64encode(self.keys.tobytes()).decode("ascii"),
                "mirror_offsets": base64.b64encode(self.offsets.astype("<i8").tobytes()).decode("ascii")}

    @classmethod
    def from_texts(cls, keys: str, offsets: str) -> MirrorKeys:
        return cls(np.frombuffer(base64.b64decode(keys, validate=True), dtype="S16"),
                   np.frombuffer(base64.b64decode(offsets, validate=True), dtype="<i8").astype(np.int64))


def export_basis(ws: Workspace, settings: Settings, kind: str, flags: dict[str, bool]) -> str:
    """Everything a row's outcome depends on besides its own line and its evidence."""
    export = settings.export

    def here(p: Any) -> Path:
        path = Path(str(p))
        return path if path.is_absolute() else ws.root / path

    tree = digest_tree_listing(here(export.repo_root)).sha256 if export.repo_root is not None else None
    bench = []
    for f in export.benchmark_files:
        try:
            bench.append(hashlib.sha256(here(f).read_bytes()).hexdigest())
        except OSError:
            bench.append(None)
    try:
        scanner = metadata.version("detect-secrets")
    except metadata.PackageNotFoundError:
        scanner = None
    return sha256_hex(canonical_json({
        "version": EXPORT_CHECKPOINT_VERSION, "kind": kind, "code": code_fingerprint(["distill"]),
        "export": export.model_dump(mode="json"), "flags": flags, "repo_tree": tree, "benchmarks": bench,
        "detect_secrets": scanner,
    }))


class TailEvidence:
    """Evidence for the lines a partition gained or changed since its checkpoint, without reading
    the whole mirror: a key the mirror's checkpointed prefix names is read at the offset of the
    first line naming it (when that line is not a valid record of the key, the prefix's lines are
    parsed as plain JSON once, only that key's validated), any other in the mirror's appended
    lines (read once, validated). A key found in neither, or not where the checkpoint says, is
    asked of the full index, and the partition is then left without a checkpoint (`unsure`), as a
    full read would be."""

    def __init__(self, index: EvidenceIndex, mirror: Path, known: MirrorKeys, end: int, hasher: PrefixHash) -> None:
        self.index, self.mirror, self.known = index, mirror, known
        self.end = end
        self._hash = LineEndHash(hasher)
        self._tail: EvidenceOffsets | None = None  # the mirror's lines after `end`
        self._prefix: EvidenceOffsets | None = None  # the mirror's checkpointed prefix
        self._fh: IO[bytes] | None = None  # the mirror, for lines read by offset
        self.unsure = False

    def _records(self) -> EvidenceOffsets:
        if self._tail is None:
            if self.mirror.is_file():
                self.index.note_read(self.mirror)
            self._tail = EvidenceOffsets(self.mirror, start=self.end, on_chunk=self._hash)
        return self._tail

    def _at(self, offset: int, key: tuple[str, str]) -> EvidenceRecord | None:
        """The record of the line at `offset` when it is a valid record of `key`."""
        if not 0 <= offset < self.end:
            return None
        try:
            if self._fh is None:
                self.index.note_read(self.mirror)
                self._fh = open(self.mirror, "rb")  # noqa: SIM115 - closed by close()
            ev = EvidenceRecord.model_validate(loads(line_at(self._fh, offset)))
        except (OSError, ValueError, ValidationError):
            return None
        return ev if (ev.run_id, ev.provenance.sig_hash) == key else None

    def _in_prefix(self, run_id: str, sig: str, offset: int) -> EvidenceRecord | None:
        """The first valid record with this key in the mirror's prefix (the one a full read joins):
        the first line naming the key, when it is valid (no line before it names the key); else
        found by parsing the prefix's lines as plain JSON once and validating only this key's."""
        found = self._at(offset, (run_id, sig))
        if found is not None:
            return found
        if self._prefix is None:
            self.index.note_read(self.mirror)
            self._prefix = EvidenceOffsets(self.mirror, end=self.end)
        return self._prefix.get((run_id, sig))

    def close(self) -> None:
        for offsets in (self._tail, self._prefix):
            if offsets is not None:
                offsets.close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def get(self, mirror: Path, run_id: str, sig: str) -> EvidenceRecord | None:
        if mirror != self.mirror:
            self.unsure = True
            return self.index.get(mirror, run_id, sig)
        offset = self.known.offset(key_digest(run_id, sig))
        if offset is not None:
            found = self._in_prefix(run_id, sig, offset)
            if found is None:  # not where the checkpoint says: ask the full index, keep no checkpoint
                self.unsure = True
                found = self.index.get(mirror, run_id, sig)
            return found
        found = self._records().get((run_id, sig))
        if found is None:
            self.unsure = True
            found = self.index.elsewhere(run_id, sig)
        return found

    def revisions(self, run_id: str) -> list[str]:
        return self.index.revisions(run_id)

    def mirror_state(self) -> tuple[int, str, MirrorKeys] | None:
        """(end, prefix hash, keys) of the mirror as far as it is known now."""
        if self._tail is None:
            return None
        self._tail.finish()  # lookups read the appended lines only as far as they needed
        sha = self._hash.hexdigest(self.mirror)
        if sha is None:
            return None
        return self._hash.end, sha, self.known.then(MirrorKeys.lines(self._tail.first_offsets()))


class ExportCheckpoints:
    """The checkpoint file (distill.checkpoint_file): a header (format, basis), then one line per
    scored partition, read one at a time; the next run's file is written as partitions are done."""

    def __init__(self, path: Path, basis: str, *, writable: bool = True, row_entries: bool = True,
                 quarantine: Path | None = None, written: Callable[[], int] | None = None,
                 known: WholeFileDigests | None = None) -> None:
        """`quarantine` (RAG/SFT): the export's quarantine file, where the last run wrote the lines
        its entries stand for; `written`: how many bytes this run has written to its next one (a
        partition's lines start there), so that the next run can read them back; `known`: the
        whole-file digests known without a read (a partition file unchanged since its checkpoint
        is then not read to check it)."""
        self.path = path
        self.basis = basis
        self.known = known
        # RAG/SFT keep RowExporter entries with their summary, the preference export its own
        # (checked by can_replay); both parsed when first used (LazyEntries)
        self._row_entries = row_entries
        self.writable = writable  # a dry run reads checkpoints and writes none
        self._written = written
        self._block_start = 0  # where the lines of the partition being exported start (written())
        self._blocks: dict[str, int] = {}  # the same for each partition that has a checkpoint

        def accept(line: bytes) -> dict[str, Any] | None:
            header = loads(line)
            ours = isinstance(header, dict) and header.get("version") == EXPORT_CHECKPOINT_VERSION
            return header if ours and header.get("basis") == basis else None

        self._file = CheckpointFile(path, accept)
        header = self._file.header
        # the run that wrote the file (what the preference export's kept decisions are tied to)
        self.token: str | None = header.get("run") if isinstance(header, dict) and isinstance(header.get("run"), str) else None
        self._last = (LastQuarantine.of(quarantine, header.get(QUARANTINE_KEY), known)
                      if row_entries and quarantine is not None and isinstance(header, dict) else None)

    def begin(self, rel: str) -> None:
        """A partition's rows come next: its quarantine lines start where this run's are now."""
        if self._written is not None:
            self._block_start = self._written()

    def _has_checkpoint(self, rel: str) -> None:
        if self._written is not None:
            self._blocks[rel] = self._block_start

    def get(self, rel: str) -> dict[str, Any] | None:
        """The partition's checkpoint; with its entries' JSON as written under "entries_raw" when
        it is small (a grown partition's next checkpoint copies it instead of writing each entry
        again), else None there."""
        payload = self._file.payload(rel)
        raw = entries_bytes(payload) if payload is not None else None
        if payload is None or raw is None:
            return None
        with raw:
            body = bytes(raw)
            kept = body if len(raw) <= KEEP_RAW_BYTES else None  # a busy partition's: parsed when it is replayed
            rest = len(ENTRIES_HEAD) + len(raw) + 1  # after the entries' closing bracket: `,"entries_digest":...}`
        try:
            found = loads(b"{" + payload[rest + 1:])
            del payload
            found[RAW_ENTRIES] = kept
            found["keys"] = MirrorKeys.from_texts(found["mirror_keys"], found["mirror_offsets"])
            found["digests"] = base64.b64decode(found["line_digests"], validate=True)
            count, odd = divmod(len(found["digests"]), LINE_DIGEST)
            lengths = decode_lengths(found.get(ENTRY_LENGTHS_KEY), count, len(body))
            if odd or lengths is None:
                return None
            found[ENTRY_LENGTHS_KEY] = lengths
            if not self._row_entries:
                found[ENTRIES_KEY] = LazyEntries(body, lengths)
            else:  # RAG/SFT: the entries' lines are in the last quarantine file, what they add up to beside them
                summary = PartitionSummary.from_fields(found, count)
                block = self._last.block(rel) if self._last is not None else None
                rows = (RowEntries.of(LazyEntries(body, lengths, _row_entries), self._last, block, summary)
                        if self._last is not None and block is not None and summary is not None else None)
                if rows is None:
                    return None
                found[ENTRIES_KEY] = rows
            for name in ("end", "lines", "mirror_end"):
                if type(found[name]) is not int or found[name] < 0:
                    return None
            return found
        except (ValueError, KeyError, TypeError):
            return None

    def write(self, rel: str, *, scored: LineEndHash, scored_path: Path, lines: int,
              mirror: tuple[int, str, MirrorKeys], entries: Entries, digests: bytes) -> None:
        """`entries`: the rows' entries in row order, as `JsonEntries.take` hands them out."""
        if not self.writable:
            return
        sha = scored.hexdigest(scored_path)
        if sha is None:
            return
        end, mirror_sha, keys = mirror
        self._has_checkpoint(rel)
        self._file.write(rel, {"end": scored.end, "lines": lines, "prefix_hash": sha, "mirror_end": end,
                               "mirror_prefix_hash": mirror_sha, **keys.texts(),
                               "line_digests": base64.b64encode(digests).decode("ascii")}, entries)

    def keep(self, rel: str) -> bool:
        """The partition's checkpoint carried over unchanged (False: it has none now)."""
        if not (self.writable and self._file.keep(rel)):
            return False
        self._has_checkpoint(rel)
        return True

    def save(self, token: str | None = None, quarantine: tuple[int, str] | None = None) -> None:
        """`token`: names the run that wrote the file, for what is kept beside it; `quarantine`:
        the size and PREFIX_HASH of the quarantine file this run wrote (RAG/SFT)."""
        if self.writable:
            header: dict[str, Any] = {"version": EXPORT_CHECKPOINT_VERSION, "basis": self.basis}
            if token is not None:
                header["run"] = token
            if quarantine is not None:
                header[QUARANTINE_KEY] = {"size": quarantine[0], "hash": quarantine[1], "blocks": self._blocks}
            self._file.save(header)

    def discard(self) -> None:
        self._file.discard()
        if self._last is not None:
            self._last.close()
            self._last = None


def mirror_of_full_read(index: EvidenceIndex, mirror: Path) -> tuple[int, str, MirrorKeys] | None:
    """(end, prefix hash, keys) of the mirror the index holds after a full read of a partition."""
    found = index.mirror_offsets(mirror)
    if found is None or index.loaded_to is None:
        return None
    end, sha = index.loaded_to
    return end, sha, MirrorKeys.lines(found)


def export_partition(ws: Workspace, path: Path, index: EvidenceIndex, exporter: PartitionExporter,
                     checkpoints: ExportCheckpoints) -> None:
    """One scored partition through the exporter: its checkpoint replayed and the lines after it
    read; or, when the partition was rewritten (score re-scored some of its runs), the entries of
    the lines that are as they were replayed and the others read; or all of it read. Then its next
    checkpoint written (when one can be)."""
    rel = rel_path(ws, path)
    mirror = ws.evidence_dir / path.relative_to(ws.scored_dir)
    checkpoints.begin(rel)
    found = checkpoints.get(rel)
    if found is not None:
        known = checkpoints.known
        mirror_hash = PrefixHash.resume(mirror, found["mirror_end"], found["mirror_prefix_hash"], known=known)
        if mirror_hash is not None:
            tail = TailEvidence(index, mirror, found["keys"], found["mirror_end"], mirror_hash)
            scored_hash = PrefixHash.resume(path, found["end"], found["prefix_hash"], known=known)
            try:
                if scored_hash is not None and exporter.can_replay(found[ENTRIES_KEY]):
                    _resume(ws, path, rel, found, tail, scored_hash, exporter, checkpoints)
                else:
                    _patch(ws, path, rel, found, tail, exporter, checkpoints)
            finally:
                tail.close()
            return
    index.fallback_used = False
    read = LineEndHash(PrefixHash())
    digests = bytearray()
    for raw, item in iter_scored_lines(ws, index, path, on_chunk=read):
        digests += line_digest(raw, item)
        exporter.feed(item)
    entries = exporter.end_partition()
    state = mirror_of_full_read(index, mirror)
    if entries is not None and state is not None and not index.fallback_used and not read.after_newline:
        checkpoints.write(rel, scored=read, scored_path=path, lines=read.newlines, mirror=state, entries=entries,
                          digests=bytes(digests))


def _write_after(checkpoints: ExportCheckpoints, rel: str, path: Path, found: dict[str, Any], tail: TailEvidence,
                 read: LineEndHash, lines: int, entries: Entries | None, digests: bytearray) -> None:
    state = tail.mirror_state() or (found["mirror_end"], found["mirror_prefix_hash"], found["keys"])
    if entries is not None and not tail.unsure and not read.after_newline:
        checkpoints.write(rel, scored=read, scored_path=path, lines=lines, mirror=state, entries=entries,
                          digests=bytes(digests))


def _resume(ws: Workspace, path: Path, rel: str, found: dict[str, Any], tail: TailEvidence, scored_hash: PrefixHash,
            exporter: PartitionExporter, checkpoints: ExportCheckpoints) -> None:
    """The partition only grew: replay its checkpoint whole, read the lines after it. A partition
    that did not grow (most of them, after an append) keeps its checkpoint as it is: its entries
    are not written out again."""
    unchanged = file_size(path) == found["end"]
    raw: bytes | None = found.pop(RAW_ENTRIES)
    # the exporter keeps the entries as JSON for the next checkpoint unless they are copied from
    # this one (`raw`) or the partition did not grow; either way let the parsed lists go
    exporter.replay(found.pop(ENTRIES_KEY), record=not unchanged and raw is None)
    read = LineEndHash(scored_hash)
    digests = bytearray(found["digests"])
    for raw_line, item in iter_scored_lines(ws, tail, path, start=found["end"], lines_before=found["lines"],
                                            on_chunk=read):
        digests += line_digest(raw_line, item)
        exporter.feed(item)
    entries = exporter.end_partition()
    if not unchanged:
        if raw and entries is not None:
            entries = entries.after(raw, found[ENTRY_LENGTHS_KEY])  # the replayed entries' JSON, then the new ones'
        _write_after(checkpoints, rel, path, found, tail, read, found["lines"] + read.newlines, entries, digests)
    elif entries is not None and not read.newlines and not read.after_newline and not tail.unsure:
        checkpoints.keep(rel)  # else it grew after all (between the stat and the read): no checkpoint


def _patch(ws: Workspace, path: Path, rel: str, found: dict[str, Any], tail: TailEvidence,
           exporter: PartitionExporter, checkpoints: ExportCheckpoints) -> None:
    """The partition was rewritten: every line whose digest (bytes, number, and offset for a line
    that could not be joined) is the one recorded for the same row position gets its recorded entry
    back, in runs the exporter accepts (`can_replay`, asked per run: what came before may have
    changed it); every other line is read and joined. The entry of a row is a function of its line,
    its evidence and the export basis, and the mirror's prefix is as it was, so this gives what
    reading every line would."""
    entries, recorded = found[ENTRIES_KEY], found["digests"]
    line = ScoredLineReader(ws, tail, path)
    read = LineEndHash(PrefixHash())
    digests = bytearray()
    held: list[tuple[RawLine, int]] = []  # unchanged lines (and their entry) not yet replayed

    def feed(raw: RawLine) -> None:
        item = line.read(raw)
        assert item is not None  # blank lines are skipped before
        digests.extend(line_digest(raw, item))
        exporter.feed(item)

    def replay_held() -> None:
        run = entries[held[0][1]:held[-1][1] + 1] if held else []
        assert len(run) == len(held)  # held lines are consecutive rows
        if run and exporter.can_replay(run):
            exporter.replay(run)
            for _, k in held:
                digests.extend(recorded[k * LINE_DIGEST:(k + 1) * LINE_DIGEST])
        else:
            for raw, _ in held:
                feed(raw)
        held.clear()

    k = 0  # row position: the k-th line that is not blank
    for raw in iter_raw_lines(path, on_chunk=read):
        if is_blank(raw):
            continue
        if k < len(entries) and _unchanged(raw, recorded[k * LINE_DIGEST:(k + 1) * LINE_DIGEST]):
            held.append((raw, k))
            if len(held) >= REPLAY_BATCH:
                replay_held()
        else:
            replay_held()
            feed(raw)
        k += 1
    replay_held()
    _write_after(checkpoints, rel, path, found, tail, read, read.newlines, exporter.end_partition(), digests)
