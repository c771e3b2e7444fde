"""The file a stage keeps its per-partition checkpoints in (score and the three exports).

One line per partition, `"<rel>"\\t{checkpoint}`, then a header line last, which also says where
each partition's line starts and how long it is (so opening the file reads its last line, not every
partition's: the preference export's file is ~0.9 GB at a million rows); a run reads one partition's
checkpoint at a time and memory does not grow with the workspace. Every line, the header too, ends
with its own xxh3-128 (`hashing.sealed`): a line read back is used only when every byte is as
written, so a damaged checkpoint (a flipped bit in a count, a key, an offset) costs that partition a
full read, never a wrong output or a failed stage.

A run appends: the partitions it writes go after the last header, the ones it keeps stay where
they are, and its header goes last; one that does not finish leaves lines after the last header,
which the next run reads past and cuts off. The header comes last because it is known last
(score's holds the task parents it saw). Once the lines no header points at outweigh the live ones
(or the file was of another basis), the live lines go to a side file that is renamed over the file.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import xxhash

from distill.hashing import SEAL_BYTES, seal, seal_intact, sealed, unsealed
from distill.jsonl import READ_CHUNK, atomic_temp_path, dumps, loads

ENTRIES_KEY = "entries"
OFFSETS_KEY = "partition_offsets"  # in the header line: rel -> where its line starts
LENGTHS_KEY = "partition_bytes"  # in the header line: rel -> its line's bytes (newline included)
ENTRIES_DIGEST_KEY = "entries_digest"
ENTRY_LENGTHS_KEY = "entry_lengths"  # each entry's bytes in the array's body (little-endian u32, base64)
_ENTRIES_OPEN = b'{"' + ENTRIES_KEY.encode() + b'":['
ENTRIES_HEAD = _ENTRIES_OPEN  # what a checkpoint written with entries starts with
_ENTRIES_CLOSE = b'],"' + ENTRIES_DIGEST_KEY.encode() + b'":"'


def entries_intact(payload: bytes) -> bool:
    """Whether a checkpoint written with entries still holds exactly the entries' bytes it was
    written with (their xxh3-128 follows them): a reader that trusts what the entries say (the
    preference export does not validate each row's provenance again) refuses a damaged one."""
    return entries_bytes(payload) is not None


def entries_bytes(payload: bytes) -> memoryview | None:
    """The body of a checkpoint's entries array (the pieces `write` joined), when intact. The
    closing marker cannot occur inside the entries (a quote in a JSON string is escaped), so its
    last occurrence ends them."""
    if not payload.startswith(_ENTRIES_OPEN):
        return None
    cut = payload.rfind(_ENTRIES_CLOSE)
    if cut < 0:
        return None
    at = cut + len(_ENTRIES_CLOSE)
    recorded = payload[at:at + 32]
    view = memoryview(payload)[len(_ENTRIES_OPEN):cut]
    return view if xxhash.xxh3_128(view).hexdigest().encode() == recorded else None


SPILL_BYTES = 8 << 20  # a partition's entries beyond this much JSON go to a temporary file


@dataclass(frozen=True)
class Entries:
    """A partition's entries as `JsonEntries.take` hands them out: pieces of a JSON array's body
    (each piece one entry or several joined by commas; never empty) and each entry's length in
    bytes, in order. The checkpoint keeps the lengths, so a reader can parse one entry alone."""

    pieces: Iterable[bytes]
    lengths: np.ndarray  # int64, one per entry
    fields: dict[str, Any] = field(default_factory=dict)  # what the checkpoint line says about them (a summary)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.pieces)

    def after(self, body: bytes, lengths: np.ndarray) -> Entries:
        """Entries already written as one body (`lengths` each), then these."""
        if not len(lengths):
            return self
        return Entries(itertools.chain((body,), self.pieces), np.concatenate((lengths, self.lengths)), self.fields)

    @classmethod
    def none(cls) -> Entries:
        return cls((), np.zeros(0, dtype=np.int64))


def encode_lengths(lengths: np.ndarray) -> str:
    return base64.b64encode(np.asarray(lengths, dtype="<u4").tobytes()).decode("ascii")


def decode_lengths(text: Any, count: int, body_bytes: int) -> np.ndarray | None:
    """The entries' lengths a checkpoint holds, when they are `count` lengths that add up (with
    the commas between them) to the body's size; None otherwise."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) != 4 * count:
        return None
    lengths = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if count and (int(lengths.sum()) + count - 1 != body_bytes or not bool(np.all(lengths > 0))):
        return None
    if not count and body_bytes:
        return None
    return lengths


class JsonEntries:
    """A partition's per-row checkpoint entries, each kept as its JSON: in memory while the
    partition's entries are small (most are: a day of one source), and written to an anonymous
    temporary file once they pass `spill_bytes`, so memory then holds 24 bytes per entry (its
    input index, offset and length): a busy day's partition can be most of a workspace. Rows can
    be decided out of input order (a gate batch); `take` hands them back in input order."""

    def __init__(self, spill_bytes: int | None = None) -> None:
        self.spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes
        self._held: list[tuple[int, bytes]] = []  # (input index, JSON) until the partition spills
        self._held_bytes = 0
        self._file: IO[bytes] | None = None  # reused across partitions, rewritten from offset 0
        self._where = array("q")  # (input index, offset, length) per entry written to the file
        self._end = 0
        self.unwritable = False  # an entry JSON cannot carry (a lone surrogate): no checkpoint

    def __len__(self) -> int:
        return len(self._where) // 3 + len(self._held)

    def add(self, index: int, entry: Any) -> None:
        try:
            data = dumps(entry)
        except (UnicodeEncodeError, ValueError):
            self.unwritable = True
            return
        self.add_json(index, data)

    def add_json(self, index: int, data: bytes) -> None:
        """An entry given as the JSON an earlier `add` made of it (read back from a checkpoint)."""
        if self._where:  # this partition spilled: the rest of it goes to the file too
            self._write(index, data)
            return
        self._held.append((index, data))
        self._held_bytes += len(data)
        if self._held_bytes > self.spill_bytes:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._file.seek(0)  # what an earlier partition left there is never read: no truncate
        held, self._held, self._held_bytes = self._held, [], 0
        for index, data in held:
            self._write(index, data)

    def _write(self, index: int, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)  # the file position is its end (only `take`'s reads move it)
        self._where.extend((index, self._end, len(data)))
        self._end += len(data)

    def take(self) -> Entries | None:
        """The entries in input order, None when one could not be written. The next partition
        starts empty; the pieces are valid until the next `add`."""
        unwritable, held = self.unwritable, self._held
        where = np.frombuffer(self._where, dtype=np.int64).reshape(-1, 3).copy() if self._where else None
        self._where, self._end, self.unwritable = array("q"), 0, False
        self._held, self._held_bytes = [], 0
        if unwritable:
            return None
        if where is None:
            if not held:
                return Entries.none()
            if any(held[k][0] > held[k + 1][0] for k in range(len(held) - 1)):
                held.sort(key=lambda item: item[0])  # stable: equal indexes keep their order
            datas = [data for _, data in held]
            # one write, not two per entry
            return Entries((b",".join(datas),), np.fromiter(map(len, datas), dtype=np.int64, count=len(datas)))
        if len(where) > 1 and bool(np.any(where[1:, 0] < where[:-1, 0])):
            where = where[np.argsort(where[:, 0], kind="stable")]
        assert self._file is not None
        return Entries(_read_entries(self._file, where), where[:, 2].copy())

    def close(self) -> None:
        self._held, self._held_bytes = [], 0
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_entries(fh: IO[bytes], where: np.ndarray) -> Iterator[bytes]:
    fh.flush()
    for _, offset, length in where.tolist():
        fh.seek(offset)
        yield fh.read(length)


class CheckpointFile:
    """`accept` reads the header line and returns it (parsed) when the checkpoints were made on
    this run's basis, None otherwise: then no partition's checkpoint is offered.

    A file whose header was accepted is appended to: a kept partition stays where its line is,
    only written partitions' lines and the new header go after the old header (a run after an
    append copied every kept line before: ~0.9 GB for the preference export at a million rows).
    The lines no header points at any more are dead bytes; `save` rewrites the file with the
    live lines only once the dead outweigh them. A file that was not accepted (another basis,
    none, damaged) is left as it is until `save` replaces it by a side file (`discard` keeps it)."""

    def __init__(self, path: Path, accept: Callable[[bytes], Any | None]) -> None:
        self.path = path
        self.header: Any | None = None
        self.offsets: dict[str, int] = {}
        self._lengths: dict[str, int] = {}  # each committed line's bytes (newline included), where known
        self._committed: int | None = None  # where the accepted header line ends: appends go after it
        # named as an atomic write's temp: the next lock holder removes one a killed run left
        self._parts_path = atomic_temp_path(path)
        self._out: IO[bytes] | None = None
        self._appending = False  # `_out` is the file itself (else the side file)
        # each partition's line in the next file: where it starts, its bytes (None: not known)
        self._placed: dict[str, tuple[int, int | None]] = {}
        try:
            with open(path, "rb") as fh:
                found = _indexed_by_header(fh)
                if found is None:
                    return
                header_line, offsets, lengths, end = found
                header = accept(header_line)
        except (OSError, ValueError):
            return
        if header is None:
            return
        self.header, self.offsets, self._lengths, self._committed = header, offsets, lengths, end

    def payload(self, rel: str) -> bytes | None:
        """The raw checkpoint of one partition (its JSON), None when there is none."""
        at = self.offsets.get(rel)
        if at is None:
            return None
        head = _line_head(rel)
        length = self._lengths.get(rel)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                # the header says how long the line is: one read (a buffered readline gathers a
                # long line 8 KiB at a time, ~6x the CPU for the preference export's ~0.7 MB lines)
                line = fh.read(length) if length is not None else fh.readline()
        except OSError:
            return None
        if not (line.startswith(head) and seal_intact(line)):
            return None
        return line[len(head):-SEAL_BYTES]

    def _output(self) -> IO[bytes]:
        """Where this run's lines go: after the accepted header in the file itself (what a killed
        run appended after it is cut off first), else a side file. A file shorter than its header
        said was changed under this run: its lines are not kept, the side file is written."""
        if self._out is not None:
            return self._out
        if self._committed is not None:
            try:
                fh = open(self.path, "r+b")  # noqa: SIM115 - closed by save/discard
            except OSError:
                fh = None
            if fh is not None:
                if fh.seek(0, os.SEEK_END) >= self._committed:
                    fh.truncate(self._committed)
                    fh.seek(self._committed)
                    self._out, self._appending = fh, True
                    return fh
                fh.close()
            self.offsets, self._lengths, self._committed = {}, {}, None
        self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed by save/discard
        return self._out

    def write(self, rel: str, checkpoint: dict[str, Any], entries: Entries | None = None) -> None:
        """One partition's next checkpoint (the file's once `save` writes the header). `entries`: what
        `JsonEntries.take` hands out, written as the checkpoint's `entries` array a piece at a
        time (so a spilled partition's line is never built whole in memory), their lengths after."""
        try:
            head = _line_head(rel)
            if entries is not None:
                checkpoint = {**checkpoint, **entries.fields, ENTRY_LENGTHS_KEY: encode_lengths(entries.lengths)}
            body = dumps(checkpoint)
        except (UnicodeEncodeError, ValueError):
            return  # a value JSON cannot carry (a lone surrogate): this partition keeps no checkpoint
        out = self._output()
        start = out.tell()
        if entries is None:
            out.write(sealed(head + body))
            self._placed[rel] = (start, out.tell() - start)
            return
        line = xxhash.xxh3_128(head + _ENTRIES_OPEN)  # the whole line's, for its seal
        out.write(head + _ENTRIES_OPEN)
        digest = xxhash.xxh3_128()
        written = 0
        for n, piece in enumerate(entries):
            if n:
                out.write(b",")
                digest.update(b",")
                line.update(b",")
                written += 1
            out.write(piece)
            digest.update(piece)
            line.update(piece)
            written += len(piece)
        count = len(entries.lengths)
        assert written == int(entries.lengths.sum()) + max(count - 1, 0), "entry lengths do not match their pieces"
        tail = _ENTRIES_CLOSE + digest.hexdigest().encode() + b'"' + (b"," + body[1:] if body != b"{}" else b"}")
        line.update(tail)
        out.write(tail + seal(line.hexdigest()))
        self._placed[rel] = (start, out.tell() - start)

    def keep(self, rel: str) -> bool:
        """Carry one partition's checkpoint over to the next file as it is, never parsed (where it
        is, or copied when the side file is written): a partition whose checkpoint still describes
        it whole. False when it has none. Its seal is checked when it is read (`payload`)."""
        self._output()
        at = self.offsets.get(rel)
        if at is None or not _starts_with(self.path, at, _line_head(rel)):
            return False  # not this partition's line: the file was changed under us
        self._placed[rel] = (at, self._lengths.get(rel))
        return True

    def save(self, header: dict[str, Any]) -> None:
        """Make the partitions written or kept this run the file's, under `header`: appended (the
        new header last), or the live lines copied to the side file, which replaces the file."""
        out = self._output()
        self._out = None
        try:
            placed = self._placed
            if self._appending:
                live = [n for _, n in placed.values() if n is not None]
                if len(live) == len(placed) and out.tell() - sum(live) <= max(sum(live), COMPACT_BYTES):
                    _seal_header(out, header, placed)
                    return
                out.flush()
                out.close()
                out = open(self._parts_path, "wb")  # noqa: SIM115 - closed below
                self._appending = False
                placed = self._copy_live(out)
            _seal_header(out, header, placed)
            os.replace(self._parts_path, self.path)
        finally:
            out.close()

    def _copy_live(self, out: IO[bytes]) -> dict[str, tuple[int, int | None]]:
        """Every partition's line as this run leaves it, copied from the file to `out` (a line
        cut short is not copied: that partition has no checkpoint); where each is in `out`."""
        placed: dict[str, tuple[int, int | None]] = {}
        with open(self.path, "rb") as fh:
            for rel, (at, _) in self._placed.items():
                start = out.tell()
                if _copy_line(fh, at, _line_head(rel), out):
                    placed[rel] = (start, out.tell() - start)
                else:
                    out.seek(start)
                    out.truncate()
        return placed

    def discard(self) -> None:
        """The file as the last `save` left it: what this run appended is cut off again."""
        self._placed = {}
        out, self._out = self._out, None
        if out is not None:
            if self._appending and self._committed is not None:
                with contextlib.suppress(OSError):
                    out.flush()
                    out.truncate(self._committed)
            out.close()
        self._appending = False
        self._parts_path.unlink(missing_ok=True)


COMPACT_BYTES = 8 << 20
"""Dead bytes (lines no header points at) an appended file may hold beyond its live bytes before
`save` rewrites it with the live lines only: a small file is not rewritten for a few partitions."""


def _line_head(rel: str) -> bytes:
    """What a partition's line starts with: its name, then a tab."""
    return dumps(rel) + b"\t"


def _seal_header(out: IO[bytes], header: dict[str, Any], placed: dict[str, tuple[int, int | None]]) -> None:
    """The header line (the stage's header, each partition's offset and the lengths known), synced."""
    offsets = {rel: at for rel, (at, _) in placed.items()}
    lengths = {rel: n for rel, (_, n) in placed.items() if n is not None}
    out.write(sealed(dumps({**header, OFFSETS_KEY: offsets, LENGTHS_KEY: lengths})))
    out.flush()
    os.fsync(out.fileno())


def _starts_with(path: Path, at: int, head: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(at)
            return fh.read(len(head)) == head
    except OSError:
        return False


def _copy_line(fh: IO[bytes], at: int, head: bytes, out: IO[bytes]) -> bool:
    """The line at `at` copied to `out` a chunk at a time; False when it is not the line of the
    partition `head` names, or is cut short (what was copied is the caller's to take back)."""
    fh.seek(at)
    first = True
    while chunk := fh.readline(READ_CHUNK):
        if first and not chunk.startswith(head):
            return False
        first = False
        out.write(chunk)
        if chunk.endswith(b"\n"):
            return True
    return False


def _split_header(line: bytes) -> tuple[bytes, dict[str, int] | None, dict[str, int]]:
    """The header as its stage wrote it (the offsets and line lengths taken out), the offsets when
    well formed, and the lengths that are (a file written before they were kept has none)."""
    found = loads(line)
    if not isinstance(found, dict) or OFFSETS_KEY not in found:
        return line, None, {}
    offsets = found.pop(OFFSETS_KEY)
    lengths = found.pop(LENGTHS_KEY, {})
    ok = isinstance(offsets, dict) and all(type(v) is int and v >= 0 for v in offsets.values())
    if not isinstance(lengths, dict):
        lengths = {}
    known = {rel: n for rel, n in lengths.items() if type(n) is int and n > 0 and rel in offsets} if ok else {}
    return dumps(found), offsets if ok else None, known


HEADER_MAX_BYTES = 256 << 20  # a longer line is not read as a header (it would be held whole): ~2M partitions


MAX_LINES_AFTER_HEADER = 1_000_000
"""Partition lines a killed run may have left after the last header that opening the file reads
past (each is one partition written, so a run leaves fewer); a file with more is no checkpoint file."""


def _complete_lines_backwards(fh: IO[bytes]) -> Iterator[tuple[int, int, int]]:
    """(start, end, first byte) of each newline-terminated line, the last first; a tail without its
    newline (a write cut short) is not a line. Reads the file backwards a chunk at a time."""
    pos = fh.seek(0, os.SEEK_END)
    stop: int | None = None  # the end of the line whose start is looked for
    first = -1  # the first byte of the chunk read before this one (the line starting at `pos`)
    while pos > 0:
        begin = max(0, pos - READ_CHUNK)
        fh.seek(begin)
        chunk = fh.read(pos - begin)
        cut = len(chunk)
        while (found := chunk.rfind(b"\n", 0, cut)) >= 0:
            if stop is not None:
                yield begin + found + 1, stop, chunk[found + 1] if found + 1 < len(chunk) else first
            stop, cut = begin + found + 1, found
        first = chunk[0] if chunk else -1
        pos = begin
    if stop is not None:
        yield 0, stop, first


def _indexed_by_header(fh: IO[bytes]) -> tuple[bytes, dict[str, int], dict[str, int], int] | None:
    """The last header line, the partitions' offsets and line lengths it holds, and where it ends;
    None when it is not as written or there is none. Partition lines (they start with a quote)
    after it were appended by a run that did not finish and are read past: the lines the header
    points at come before it and were not touched since. Any other line there is damage."""
    for skipped, (start, end, first) in enumerate(_complete_lines_backwards(fh)):
        if first == ord('"'):
            if skipped >= MAX_LINES_AFTER_HEADER:
                return None
            continue
        if end - start > HEADER_MAX_BYTES:
            return None
        fh.seek(start)
        line = unsealed(fh.read(end - start))
        if line is None:
            return None
        try:
            header, offsets, lengths = _split_header(line)
        except ValueError:
            return None
        if offsets is None or any(at >= start for at in offsets.values()):
            return None
        return header, offsets, lengths, end
    return None
