"""What a pass over a JSONL file counted, kept so that the next pass reads only what was appended.

Receipts check that every output line is a JSON object and count the outputs' categories; the
dataset card counts rows and quarantine reasons. Each is a fold over a file's complete lines, and
most files they read only grow (evidence and scored partitions, the native exports, the views),
so a periodic run re-read gigabytes to count the one per cent that was new. A `Tally` is saved
with the length and sha256 of the whole-line prefix it covers; the next tally of that file
re-hashes the prefix (hashing is far cheaper than parsing) and, when it still matches, folds only
the lines after it. sha256, not the checkpoints' faster prefix hash: a tally is matched against the
digest a receipt made of the whole file, so an unchanged file is not read at all. Anything else
(a file rewritten, shortened or edited in place, a cache of another version, a fold renamed) is
folded from the start: the cache only saves work; losing or corrupting it costs one full read,
never a wrong count.

A file that was rewritten rather than appended to (each export's quarantine file is, on every run:
its lines are in input order, so new rows land inside it) gets a line memo (`LineMemo`): what each
distinct line contributed, by the line's xxh3-128, kept beside the cache. The next fold of that
file splits and hashes its lines and parses only those the memo does not know: a fold is a
function of each line alone, so a known line counts what it counted before.

A quarantine file's writer counts what it writes (a `WriterTally`: the bytes' size and
`distill.hashing.PREFIX_HASH`, its lines, the value each line counts under). When the receipt's
digest pass found the file on disk to be exactly those bytes (same size and PREFIX_HASH, the same
line count by its own newline count), that tally is the fold: the lines are the writer's own
serialised objects or lines copied from the last file, which its receipt checked. A writer tally
that does not match is ignored and the file folded.

Files are named relative to the cache file's folder (the workspace root), so a workspace moved or
restored elsewhere keeps its tallies. A fold that counts no values (`key=None`, the integrity
check's) is the same for every fold of the same bytes: it is taken from another fold's tally of
the file when that tally covers exactly the bytes the caller digested, so a receipt that counts an
output's categories and then checks its lines reads the appended lines once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from distill.hashing import (
    FileState,
    PrefixHash,
    file_size,
    file_state,
    sealed,
    unsealed,
)
from distill.jsonl import READ_CHUNK, dumps, iter_raw_lines, loads, read_sealed, write_atomic, write_sealed
from distill.sorted_search import search_sorted

FOLD_CACHE_VERSION: Literal[2] = 2  # 2: files named relative to the cache's folder
RowKey = Callable[[dict[str, Any]], str | None]
"""What a fold counts of a JSON-object row: a value, or None for "not counted"."""


@dataclass(slots=True)
class Tally:
    """One file's complete lines, folded. `end`/`lines` say how far; `torn` is the byte length of an
    unterminated last line (never covered: the next append completes or cuts it)."""

    end: int = 0
    lines: int = 0
    nonblank: int = 0  # complete lines with content (too-long lines excluded)
    bad: int = 0  # complete non-blank lines that are not JSON objects
    first_bad: int | None = None
    values: dict[str, int] = field(default_factory=dict)  # rows per key(row), JSON objects only
    torn: int | None = None

    def copy(self) -> Tally:
        return replace(self, values=dict(self.values))


@dataclass(frozen=True, slots=True)
class _Entry:
    sha256: str
    tally: Tally

    def to_json(self, path: str, fold: str) -> list[Any]:
        t = self.tally
        return [path, fold, self.sha256, t.end, t.lines, t.nonblank, t.bad, t.first_bad, t.values]

    @staticmethod
    def from_json(item: Any) -> tuple[tuple[str, str], _Entry]:
        """Raises ValueError/TypeError on anything but a well-formed entry."""
        path, fold, sha, end, lines, nonblank, bad, first_bad, values = item
        counts = (end, lines, nonblank, bad)
        if not (isinstance(path, str) and isinstance(fold, str) and isinstance(sha, str)
                and all(type(n) is int and n >= 0 for n in counts) and (first_bad is None or type(first_bad) is int)
                and isinstance(values, dict) and all(type(n) is int and n >= 0 for n in values.values())):
            raise ValueError("not a fold cache entry")
        return (path, fold), _Entry(sha, Tally(end, lines, nonblank, bad, first_bad, dict(values)))


# a line memo's codes besides a value's index: blank; not a JSON object; a JSON object with no value
_BLANK, _BAD, _UNCOUNTED = -3, -2, -1
_MISS = -4  # (not in a memo) a line the memo does not know


class LineMemo:
    """What each distinct line contributed to one fold, by its xxh3-128: `_BLANK`, `_BAD`,
    `_UNCOUNTED` or the index of its value in `values`. Digests are held as sorted (high, low)
    64-bit columns, 20 bytes a distinct line, so a memo of a million-line file stays small."""

    MAGIC = b"distill-fold-lines/1\n"

    def __init__(self, digests: np.ndarray | None = None, codes: np.ndarray | None = None,
                 values: list[str] | None = None) -> None:
        self.digests = digests if digests is not None else np.empty((0, 2), dtype=np.uint64)
        self._high = np.ascontiguousarray(self.digests[:, 0])  # searched per batch: a column view would be copied each time
        self.codes = codes if codes is not None else np.empty(0, dtype=np.int32)
        self.values = values or []
        # what the fold in progress saw: every line's digest and code, for the memo it leaves
        self._seen_digests: list[bytes] = []
        self._seen_codes: list[np.ndarray] = []
        self._value_codes = {value: n for n, value in enumerate(self.values)}

    def codes_of(self, digests: bytes) -> np.ndarray:
        """The code of each 16-byte digest in `digests` (int32), `_MISS` for a line it does not know."""
        asked = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        if not len(self.codes):
            return np.full(len(asked), _MISS, dtype=np.int32)
        at = np.minimum(search_sorted(self._high, asked[:, 0]), len(self.codes) - 1)
        hit = (self._high[at] == asked[:, 0]) & (self.digests[at, 1] == asked[:, 1])
        # equal high halves with other low halves sort after the first: such a line is parsed (a miss)
        return np.where(hit, self.codes[at], np.int32(_MISS)).astype(np.int32)

    def code_for(self, value: str | None) -> int:
        if value is None:
            return _UNCOUNTED
        code = self._value_codes.get(value)
        if code is None:
            code = self._value_codes[value] = len(self.values)
            self.values.append(value)
        return code

    def saw(self, digests: bytes, codes: np.ndarray) -> None:
        self._seen_digests.append(digests)
        self._seen_codes.append(codes)

    def of_this_fold(self) -> LineMemo:
        """The memo of the lines the last fold saw (no others: it does not grow with old lines)."""
        digests = np.frombuffer(b"".join(self._seen_digests), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        codes = np.concatenate(self._seen_codes) if self._seen_codes else np.empty(0, dtype=np.int32)
        digests, codes = _by_digest(digests, codes)
        if len(codes):
            first = np.ones(len(codes), dtype=bool)
            first[1:] = np.any(digests[1:] != digests[:-1], axis=1)
            digests, codes = digests[first], codes[first]
        return LineMemo(np.ascontiguousarray(digests), np.ascontiguousarray(codes), list(self.values))

    def same_lines(self, other: LineMemo) -> bool:
        """Whether both know the same lines with the same counts (then there is nothing to save)."""
        return (np.array_equal(self.digests, other.digests) and np.array_equal(self.codes, other.codes)
                and self.values == other.values)

    def to_bytes(self) -> bytes:
        body = self.digests.astype("<u8").tobytes() + self.codes.astype("<i4").tobytes()
        header = dumps({"lines": len(self.codes), "values": self.values})
        return sealed(self.MAGIC + header + b"\n" + body)

    @classmethod
    def from_bytes(cls, data: bytes) -> LineMemo | None:
        """None for anything `to_bytes` did not write (damaged, cut short, another version)."""
        data = unsealed(data)  # the seal covers the header's values too, not only the body
        if data is None or not data.startswith(cls.MAGIC):
            return None
        try:
            head, _, body = data[len(cls.MAGIC):].partition(b"\n")
            header = loads(head)
            n, values = header["lines"], header["values"]
            if not (type(n) is int and n >= 0 and isinstance(values, list) and all(isinstance(v, str) for v in values)
                    and len(body) == 20 * n):
                return None
        except (ValueError, TypeError, KeyError):
            return None
        digests = np.frombuffer(body[:16 * n], dtype="<u8").reshape(-1, 2)
        codes = np.frombuffer(body[16 * n:], dtype="<i4").astype(np.int32)
        if n and (codes.min() < _BLANK or codes.max() >= len(values)):
            return None
        return cls(digests.astype(np.uint64), codes, list(values))


def _by_digest(digests: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sorted by (high, low) digest half. Sorted by the high half alone first (one integer
    sort, ~7x cheaper than the two-key sort over a million lines); only when two different digests
    share a high half and came out of order is the two-key sort needed (identical lines share both
    halves, so they are in order already)."""
    order = np.argsort(digests[:, 0])
    digests, codes = digests[order], codes[order]
    tied = digests[1:, 0] == digests[:-1, 0]
    if np.any(tied & (digests[1:, 1] < digests[:-1, 1])):
        order = np.lexsort((digests[:, 1], digests[:, 0]))
        digests, codes = digests[order], codes[order]
    return digests, codes


def _outcome(data: bytes, key: RowKey | None) -> str | int:
    """What one line adds to a fold: `_BLANK`, `_BAD`, `_UNCOUNTED`, or the value it counts under."""
    if not data.strip():
        return _BLANK
    try:
        row = loads(data)
    except ValueError:
        return _BAD
    if not isinstance(row, dict):
        return _BAD
    value = key(row) if key is not None else None
    return _UNCOUNTED if value is None else value


def fold_lines(path: Path, key: RowKey | None, start: Tally | None = None, on_chunk: Callable[[bytes], None] | None = None,
               memo: LineMemo | None = None) -> Tally:
    """Fold the complete lines of `path` after `start` (from the beginning when None). With a
    `memo`, a line it knows is not parsed, and the memo notes every line seen (`of_this_fold`)."""
    tally = start.copy() if start is not None else Tally()
    tally.torn = None
    if memo is not None:
        return _fold_with_memo(path, key, tally, on_chunk, memo)
    values = tally.values
    for raw in iter_raw_lines(path, start=tally.end, lines_before=tally.lines, on_chunk=on_chunk):
        if not raw.terminated:
            tally.torn = raw.length
            break
        tally.lines = raw.number
        tally.end = raw.offset + raw.length + 1
        outcome = _outcome(raw.data or b"", key)
        if outcome == _BLANK:
            continue  # neither a row nor a bad line
        tally.nonblank += 1
        if outcome == _BAD:
            tally.bad += 1
            if tally.first_bad is None:
                tally.first_bad = raw.number
        elif outcome != _UNCOUNTED:
            assert isinstance(outcome, str)
            values[outcome] = values.get(outcome, 0) + 1
    return tally


def _fold_with_memo(path: Path, key: RowKey | None, tally: Tally, on_chunk: Callable[[bytes], None] | None,
                    memo: LineMemo) -> Tally:
    """`fold_lines` a chunk at a time: the chunk's lines are split and hashed, looked up in the
    memo at once, only the unknown ones parsed, and the counts taken per chunk (no per-line
    bookkeeping: that, not the parse, was most of what a memo fold line by line still cost)."""
    digest_of = xxhash.xxh3_128_digest
    values = tally.values
    torn: list[bytes] = []  # the line the last chunk ended inside, in pieces
    with open(path, "rb") as fh:
        fh.seek(tally.end)
        while chunk := fh.read(READ_CHUNK):
            if on_chunk is not None:
                on_chunk(chunk)
            if b"\n" not in chunk:
                torn.append(chunk)
                continue
            lines = chunk.split(b"\n")
            if torn:
                lines[0] = b"".join([*torn, lines[0]])
            tail = lines.pop()
            torn = [tail] if tail else []
            digests = b"".join([digest_of(line) for line in lines])
            codes = memo.codes_of(digests)
            for i in np.flatnonzero(codes == _MISS).tolist():
                outcome = _outcome(lines[i], key)
                codes[i] = outcome if isinstance(outcome, int) else memo.code_for(outcome)
            memo.saw(digests, codes)
            counts = np.bincount(codes - _BLANK, minlength=-_BLANK)  # codes from _BLANK up
            bad = int(counts[_BAD - _BLANK])
            if bad and tally.first_bad is None:
                tally.first_bad = tally.lines + 1 + int(np.argmax(codes == _BAD))
            tally.bad += bad
            tally.nonblank += len(lines) - int(counts[0])
            for code, n in enumerate(counts[-_BLANK:].tolist()):
                if n:
                    value = memo.values[code]
                    values[value] = values.get(value, 0) + n
            tally.lines += len(lines)
            tally.end += sum(map(len, lines)) + len(lines)
    if torn:
        tally.torn = sum(map(len, torn))
    return tally


WRITER_TALLY_VERSION: Literal[1] = 1


@dataclass(frozen=True, slots=True)
class WriterTally:
    """What the writer of a file of JSON-object lines counted as it wrote them: the bytes' size and
    PREFIX_HASH, the lines, and the lines per value of one fold (a quarantine file's reasons)."""

    size: int
    xxh3: str
    lines: int
    values: dict[str, int]

    def tally(self) -> Tally:
        return Tally(end=self.size, lines=self.lines, nonblank=self.lines, values=dict(self.values))

    def save(self, path: Path) -> None:
        """Sealed and atomic; a tally that cannot be written costs the next receipt a fold, nothing more."""
        body = {"version": WRITER_TALLY_VERSION, "size": self.size, "xxh3": self.xxh3, "lines": self.lines,
                "values": self.values}
        try:
            write_sealed(path, dumps(body))
        except OSError:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> WriterTally | None:
        """The saved tally; None when it is missing, changed, of another version or does not add up."""
        data = read_sealed(path)
        if data is None:
            return None
        try:
            body = loads(data)
            size, xxh3, lines, values = body["size"], body["xxh3"], body["lines"], body["values"]
            if not (body.get("version") == WRITER_TALLY_VERSION and type(size) is int and type(lines) is int
                    and isinstance(xxh3, str) and isinstance(values, dict) and 0 <= lines <= size
                    and all(isinstance(v, str) and type(n) is int and n > 0 for v, n in values.items())
                    and sum(values.values()) == lines):
                return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return cls(size, xxh3, lines, dict(values))


class FoldCache:
    """Tallies by (file, fold name), loaded from and saved to one workspace file.

    A fold's name stands for its key function: change what a fold counts, change its name.
    """

    def __init__(self, path: Path | None = None, entries: dict[tuple[str, str], _Entry] | None = None,
                 on_disk: FileState | None = None) -> None:
        self.path = path
        self._changed: dict[tuple[str, str], _Entry] = {}
        self._memos: dict[tuple[str, str], LineMemo] = {}  # to write at `save`
        self._adopt(entries or {})
        self._on_disk = on_disk  # the file as this cache last read or wrote it
        # (file, end) -> a sha256 object over the file's first `end` bytes as the file is now, or
        # None: a run that has just hashed a grown output whole (its receipt) hands its state at
        # the counted prefix over (receipts.DigestCache.prefix_state) instead of a second pass
        self.prefix_state: Callable[[Path, int], Any | None] | None = None
        # the whole file's sha256 when the run has hashed the file in its present state (stat key:
        # receipts.DigestCache.settled_sha256_of): a file folded from its first byte whose digest
        # the caller passes and this confirms is not hashed a second time (a rewritten quarantine file)
        self.known_sha256: Callable[[Path], str | None] | None = None
        # the whole file's (size, PREFIX_HASH) on the same terms (receipts.DigestCache.settled_xxh3_of):
        # what a `WriterTally` is matched against
        self.known_xxh3: Callable[[Path], tuple[int, str] | None] | None = None

    def ends(self, file: Path) -> list[int]:
        """Where the counted prefixes of `file` end (one per fold that has counted it)."""
        name = self._name(file)
        return [self._entries[(name, fold)].tally.end for fold in self._folds_of.get(name, ())]

    def _resume(self, file: Path, entry: _Entry, *, read: bool = True) -> PrefixHash | None:
        """A sha256 over the entry's counted prefix, when the file still starts with those bytes:
        from the run's hash state there (distill.receipts.DigestCache.prefix_state), else, with
        `read`, by reading them."""
        end = entry.tally.end
        state = self.prefix_state(file, end) if self.prefix_state is not None else None
        if state is None:
            return PrefixHash.resume(file, end, entry.sha256, new=hashlib.sha256) if read else None
        return PrefixHash(state, end, new=hashlib.sha256) if state.hexdigest() == entry.sha256 else None

    def _hashed_as_it_is(self, file: Path, sha256: str) -> bool:
        return self.known_sha256 is not None and self.known_sha256(file) == sha256

    def _written_as_it_is(self, file: Path, sha256: str, written: WriterTally) -> bool:
        # both lookups key on the file's present stat, its size included
        return (self.known_xxh3 is not None and self._hashed_as_it_is(file, sha256)
                and self.known_xxh3(file) == (written.size, written.xxh3))

    def _adopt(self, entries: dict[tuple[str, str], _Entry]) -> None:
        self._entries = entries
        self._folds_of: dict[str, list[str]] = {}
        for name, fold in self._entries:
            self._folds_of.setdefault(name, []).append(fold)

    def _name(self, file: Path) -> str:
        return str(file) if self.path is None else os.path.relpath(file, self.path.parent)

    def _keep(self, name: str, fold: str, entry: _Entry) -> None:
        if (name, fold) not in self._entries:
            self._folds_of.setdefault(name, []).append(fold)
        self._entries[(name, fold)] = self._changed[(name, fold)] = entry

    def _counted_elsewhere(self, name: str, sha256: str, size: int | None) -> _Entry | None:
        """Another fold's tally of exactly these bytes, without its values."""
        for other in self._folds_of.get(name, ()):
            entry = self._entries[(name, other)]
            if entry.sha256 == sha256 and entry.tally.end == size:
                return _Entry(sha256, replace(entry.tally, values={}, torn=None))
        return None

    def _memo_path(self, name: str, fold: str) -> Path | None:
        if self.path is None:
            return None
        return memo_dir(self.path) / (hashlib.sha256(f"{name}\0{fold}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
                                      + ".memo")

    @staticmethod
    def remove(path: Path) -> None:
        """Delete the cache at `path` and its line memos (`distill run --force`)."""
        path.unlink(missing_ok=True)
        shutil.rmtree(memo_dir(path), ignore_errors=True)

    @classmethod
    def load(cls, path: Path) -> FoldCache:
        """The saved cache, or an empty one when it is missing, unreadable or of another version.
        One cache can serve a whole run: `save` after each use merges only what another process
        saved meanwhile."""
        on_disk = _state(path)  # before the read: a save in between is then seen as a change
        return cls(path, _read(path), on_disk)

    def tally(self, file: Path, fold: str, key: RowKey | None = None, *, sha256: str | None = None,
              rewritten: bool = False, written: WriterTally | None = None) -> Tally:
        """The fold of `file`'s complete lines. `sha256`: the whole file's digest when the caller
        already has it, so an unchanged file is not even re-hashed. `rewritten`: the caller knows
        the file is written whole each time (a quarantine file), so it keeps a line memo from its
        first fold on; any other file gets one once it is found rewritten. `written`: what the
        file's writer counted of this fold, taken (no read) when this run hashed the file in its
        present state and found those very bytes (the caller has checked the line count)."""
        name = self._name(file)
        entry = self._entries.get((name, fold))
        start: Tally | None = None
        hasher: PrefixHash | None = None
        if sha256 is not None:
            size = file_size(file)
            if entry is not None and entry.sha256 == sha256 and size == entry.tally.end:
                return entry.tally.copy()
            if key is None and (derived := self._counted_elsewhere(name, sha256, size)):
                self._keep(name, fold, derived)
                return derived.tally.copy()
            if written is not None and self._written_as_it_is(file, sha256, written):
                self._keep(name, fold, _Entry(sha256, written.tally()))
                return written.tally()
        # a file with a line memo was rewritten before: when the caller's digest says it changed,
        # it is folded with the memo rather than first hashed to learn that its prefix changed too
        memo_path = self._memo_path(name, fold) if entry is not None or rewritten else None
        has_memo = memo_path is not None and memo_path.is_file()
        if entry is not None:
            # a rewritten file that kept the counted lines in place (appended to) goes on from the
            # run's own hash state there, when its receipt left one (no read)
            hasher = self._resume(file, entry, read=not (has_memo and sha256 is not None))
            if hasher is not None:
                start = entry.tally
        memo: LineMemo | None = None
        if start is None and memo_path is not None:
            # read only now: a file whose prefix held does not need its memo (the card asks after the receipts)
            memo = (_read_memo(memo_path) if has_memo else None) or LineMemo()
        if hasher is None:
            hasher = PrefixHash(new=hashlib.sha256)
        vouched = start is None and sha256 is not None and self._hashed_as_it_is(file, sha256)
        tally = fold_lines(file, key, start, on_chunk=None if vouched else hasher.update, memo=memo)
        if vouched:
            # the digest of the folded bytes only when they are the whole file and it is still as
            # hashed (a file changed under the fold keeps no entry: the next fold reads it again)
            whole = tally.torn is None and tally.end == file_size(file) and self._hashed_as_it_is(file, sha256)
            digest = sha256 if whole else None
        else:
            digest = hasher.hexdigest_to(file, tally.end)
        if digest is not None:
            self._keep(name, fold, _Entry(digest, replace(tally.copy(), torn=None)))
            if memo is not None and not (learned := memo.of_this_fold()).same_lines(memo):
                self._memos[(name, fold)] = learned
        return tally

    def save(self) -> None:
        """Write this cache's new tallies over what is on disk now (another command may have saved
        its own meanwhile: the file is read again only when it changed since this cache last read
        or wrote it), dropping entries (and line memos) of files that no longer exist. Line memos are
        written as they are: each one only says what lines contributed, true whichever run wrote it."""
        if self.path is None or not self._changed:
            return
        for (name, fold), memo in self._memos.items():
            memo_path = self._memo_path(name, fold)
            assert memo_path is not None
            try:
                memo_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(memo_path, memo.to_bytes())
            except OSError:
                pass  # a memo that cannot be written costs the next fold its parse, nothing more
        self._memos.clear()
        if self._on_disk is None or _state(self.path) != self._on_disk:
            merged = _read(self.path)
            merged.update(self._changed)
            self._adopt(merged)
        else:
            merged = self._entries
        base = os.fspath(self.path.parent)
        existing: dict[str, bool] = {}
        entries = [e.to_json(path, fold) for (path, fold), e in sorted(merged.items())
                   if existing.setdefault(path, os.path.isfile(os.path.join(base, path)))]
        for path, fold in merged:
            if not existing[path] and (gone := self._memo_path(path, fold)) is not None:
                gone.unlink(missing_ok=True)  # the memo of a file that no longer exists goes with its entry
        payload = {"version": FOLD_CACHE_VERSION, "entries": entries}
        try:
            write_sealed(self.path, dumps(payload))
        except OSError:
            return  # a cache that cannot be written costs the next run a full read, nothing more
        self._on_disk = _state(self.path)
        self._changed.clear()


def _read_memo(path: Path) -> LineMemo | None:
    try:
        return LineMemo.from_bytes(path.read_bytes())
    except OSError:
        return None


def memo_dir(cache_path: Path) -> Path:
    """Where the line memos of the fold cache at `cache_path` are kept."""
    return cache_path.with_name(cache_path.name + ".lines")


def _read(path: Path) -> dict[tuple[str, str], _Entry]:
    data = read_sealed(path)  # a changed byte would be a wrong count: no cache
    if data is None:
        return {}
    try:
        saved = loads(data)
        if not isinstance(saved, dict) or saved.get("version") != FOLD_CACHE_VERSION:
            return {}
        return dict(_Entry.from_json(item) for item in saved["entries"])
    except (ValueError, TypeError, KeyError):
        return {}


def _state(path: Path) -> FileState | None:
    try:
        return file_state(path.stat())
    except OSError:
        return None
