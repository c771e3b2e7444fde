"""The file a stage keeps its per-partition checkpoints in (score, the RAG/SFT exports).

One line per partition, `"<rel>"\\t{checkpoint}`, then a header line last, which also says where
each partition's line starts (so opening the file reads its last line, not every partition's: the
preference export's file is ~0.9 GB at a million rows); a run reads one partition's checkpoint at a
time and memory does not grow with the workspace. Every line, the header too, ends with its own
xxh3-128 (`hashing.sealed`): a line read back is used only when every byte is as written, so a
damaged checkpoint (a flipped bit in a count, a key, an offset) costs that partition a full read,
never a wrong output or a failed stage. The next run's lines go to a side file as partitions are done;
at the end the header is appended and the side file renamed over the file (atomically), or it is
thrown away when the run does not finish. The header comes last because it is known last (score's
holds the task parents it saw): the side file becomes the file without being copied.
"""

from __future__ import annotations

import base64
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
    this run's basis, None otherwise: then no partition's checkpoint is offered."""

    def __init__(self, path: Path, accept: Callable[[bytes], Any | None]) -> None:
        self.path = path
        self.header: Any | None = None
        self.offsets: dict[str, int] = {}
        # named as an atomic write's temp: the next lock holder removes one a killed run left
        self._parts_path = atomic_temp_path(path)
        self._out: IO[bytes] | None = None
        self._written: dict[str, int] = {}  # where each partition's line starts in the side file
        try:
            with open(path, "rb") as fh:
                found = _indexed_by_header(fh)
                if found is None:
                    return
                header_line, offsets = found
                header = accept(header_line)
        except (OSError, ValueError):
            return
        if header is None:
            return
        self.header, self.offsets = header, offsets

    def payload(self, rel: str) -> bytes | None:
        """The raw checkpoint of one partition (its JSON), None when there is none."""
        at = self.offsets.get(rel)
        if at is None:
            return None
        head = dumps(rel) + b"\t"
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                line = fh.readline()
        except OSError:
            return None
        return line[len(head):-SEAL_BYTES] if line.startswith(head) and seal_intact(line) else None

    def write(self, rel: str, checkpoint: dict[str, Any], entries: Entries | None = None) -> None:
        """One partition's next checkpoint (kept in the side file until `save`). `entries`: what
        `JsonEntries.take` hands out, written as the checkpoint's `entries` array a piece at a
        time (so a spilled partition's line is never built whole in memory), their lengths after."""
        try:
            head = dumps(rel) + b"\t"
            if entries is not None:
                checkpoint = {**checkpoint, **entries.fields, ENTRY_LENGTHS_KEY: encode_lengths(entries.lengths)}
            body = dumps(checkpoint)
        except (UnicodeEncodeError, ValueError):
            return  # a value JSON cannot carry (a lone surrogate): this partition keeps no checkpoint
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed by save/discard
        out = self._out
        self._written[rel] = out.tell()
        if entries is None:
            out.write(sealed(head + body))
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

    def keep(self, rel: str) -> bool:
        """Carry one partition's checkpoint over to the next file as it is (its line copied, never
        parsed): a partition whose checkpoint still describes it whole. False when it has none."""
        at = self.offsets.get(rel)
        if at is None:
            return False
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed by save/discard
        out = self._out
        start = out.tell()
        head = dumps(rel) + b"\t"
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                first = True
                while chunk := fh.readline(READ_CHUNK):
                    if first and not chunk.startswith(head):
                        break  # not this partition's line: the file was changed under us
                    first = False
                    out.write(chunk)
                    if chunk.endswith(b"\n"):
                        self._written[rel] = start
                        return True
        except OSError:
            pass
        out.seek(start)  # a line cut short is no checkpoint: take back what was copied
        out.truncate()
        return False

    def save(self, header: dict[str, Any]) -> None:
        """Replace the file: the partitions written this run, then the header."""
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed below
        out, self._out = self._out, None
        with out:
            out.write(sealed(dumps({**header, OFFSETS_KEY: self._written})))
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._parts_path, self.path)

    def discard(self) -> None:
        self._written = {}
        if self._out is not None:
            self._out.close()
            self._out = None
        self._parts_path.unlink(missing_ok=True)


def _split_header(line: bytes) -> tuple[bytes, dict[str, int] | None]:
    """The header as its stage wrote it (the offsets taken out), and the offsets when well formed."""
    found = loads(line)
    if not isinstance(found, dict) or OFFSETS_KEY not in found:
        return line, None
    offsets = found.pop(OFFSETS_KEY)
    ok = isinstance(offsets, dict) and all(type(v) is int and v >= 0 for v in offsets.values())
    return dumps(found), offsets if ok else None


def _last_line(fh: IO[bytes]) -> tuple[int, bytes] | None:
    """(where it starts, the line) of a file's last line, when the file ends with a newline."""
    end = fh.seek(0, os.SEEK_END)
    if not end:
        return None
    fh.seek(end - 1)
    if fh.read(1) != b"\n":
        return None
    start = pos = end - 1
    while pos > 0:
        begin = max(0, pos - READ_CHUNK)
        fh.seek(begin)
        cut = fh.read(pos - begin).rfind(b"\n")
        if cut >= 0:
            start = begin + cut + 1
            break
        pos = start = begin
    fh.seek(start)
    return start, fh.read(end - start)


def _indexed_by_header(fh: IO[bytes]) -> tuple[bytes, dict[str, int]] | None:
    """The header line and the partitions' offsets it holds; None when there is no header, or it is
    not as written (then no partition's checkpoint is offered)."""
    last = _last_line(fh)
    if last is None or last[1].startswith(b'"'):
        return None
    start, line = last[0], unsealed(last[1])
    if line is None:
        return None
    header, offsets = _split_header(line)
    if offsets is None or any(at >= start for at in offsets.values()):
        return None
    return header, offsets
