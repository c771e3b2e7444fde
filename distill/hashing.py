"""Canonical JSON and content hashes: the basis of provenance and deterministic ids."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import xxhash

_ORJSON_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8. Stable across runs and machines.

    orjson refuses integers beyond 64 bits; the stdlib fallback keeps such rows hashable
    instead of turning them into errors.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_CANONICAL)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def sig_hash(row: Any) -> str:
    """sha256 of the canonical JSON of a source row (provenance.sig_hash, docs/DESIGN.md)."""
    return sha256_hex(canonical_json(row))


def content_id(prefix: str, *parts: str, length: int = 16) -> str:
    """A short content-derived id, e.g. content_id("sft", run_id, sig) -> "sft-1a2b...".

    Parts are joined with "|" so ("a|b", "c") and ("a", "b|c") collide only if a caller
    puts "|" in a part on purpose; ids in this project never do.
    """
    return f"{prefix}-{sha256_hex('|'.join(parts))[:length]}"


PREFIX_CHUNK = 1 << 20
FileState = tuple[int, int, int, int]
"""(inode, size, mtime_ns, ctime_ns): a file replaced, rewritten or edited since shows another
state (the kernel sets the ctime on every change; `touch` cannot set it back)."""


def file_state(st: os.stat_result) -> FileState:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_size(path: Path) -> int | None:
    """The file's size now; None when it cannot be stat'ed (gone, unreadable)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


PREFIX_HASH = "xxh3-128"
"""What the checkpoints recognise an already-read prefix of a file by. They only ask "does this
file still start with the bytes I read?" of our own workspace files (never what a receipt or an
export publishes: those digests are sha256), and ask it of every prefix on every run, so the
hash is xxh3 (128 bits, ~20 GB/s here) rather than sha256 (~1.7 GB/s with SHA-NI)."""


def new_prefix_hasher() -> Any:
    return xxhash.xxh3_128()


def prefix_hash(path: Path, end: int, new: Callable[[], Any] = new_prefix_hasher) -> Any:
    """A hash object (made by `new`) over the first `end` bytes of a file (it can go on hashing
    what follows), or None when the file is shorter or unreadable."""
    h = new()
    left = end
    try:
        with open(path, "rb") as fh:
            while left:
                chunk = fh.read(min(PREFIX_CHUNK, left))
                if not chunk:
                    return None
                h.update(chunk)
                left -= len(chunk)
    except OSError:
        return None
    return h


WholeFileDigests = Callable[[Path], "tuple[int, str] | None"]
"""(size, PREFIX_HASH) of a whole file as it is now, when something already knows it without
reading the file (the receipts' digest cache, by stat key: distill.receipts.DigestCache.xxh3_of)."""

WholeFileSha256 = Callable[[Path], "tuple[str, int | None] | None"]
"""(sha256, complete-line count for JSONL) of a whole file as it is now, known the same way
(distill.receipts.DigestCache.sha256_lines_of)."""


def file_digest(path: Path, known: WholeFileDigests | None = None) -> tuple[int, str] | None:
    """(size, PREFIX_HASH) of a whole file, None when it cannot be read: what a cache that points
    into a file it did not write last (a quarantine file) checks that file by. `known`: where the
    digest may be known without a read (a file as the last run's receipts hashed it)."""
    if known is not None and (found := known(path)) is not None:
        return found
    size = file_size(path)
    hasher = prefix_hash(path, size) if size is not None else None
    return None if size is None or hasher is None else (size, str(hasher.hexdigest()))


SEAL_BYTES = 34  # b"\t" + the xxh3-128 of what comes before it (32 hex digits) + b"\n"


def seal(xxh3_128_hex: str) -> bytes:
    """What follows sealed bytes, given their xxh3-128 (for a line hashed as it is streamed out)."""
    return b"\t" + xxh3_128_hex.encode() + b"\n"


def sealed(data: bytes) -> bytes:
    """`data` (a cache file, or one line of a checkpoint file, without its newline) followed by
    its own xxh3-128. A cache is derived data that distill trusts on the next run (counts, dedup
    keys, stored quarantine lines): read back through `unsealed`, one changed byte makes it no
    cache (the work is redone) instead of a wrong output or a stage that fails on it."""
    return data + seal(xxhash.xxh3_128_hexdigest(data))


def seal_intact(data: bytes) -> bool:
    """Whether `data` is what `sealed` wrote, every byte as it was."""
    if len(data) < SEAL_BYTES or data[-SEAL_BYTES] != 0x09 or data[-1] != 0x0A:
        return False
    return xxhash.xxh3_128_hexdigest(memoryview(data)[:-SEAL_BYTES]).encode() == data[1 - SEAL_BYTES:-1]


def unsealed(data: bytes) -> bytes | None:
    """What `sealed` was given, when every byte is as it wrote them; None otherwise."""
    return data[:-SEAL_BYTES] if seal_intact(data) else None


def line_digest(line: bytes) -> bytes:
    """A line's 128-bit digest for comparisons within one run (score's mirror lines, collect's
    rebuilt evidence): never saved, so xxh3 rather than a cryptographic hash."""
    return xxhash.xxh3_128_digest(line)


def split_digests(packed: bytes | bytearray, size: int = 16) -> list[bytes]:
    """Digests of `size` bytes laid end to end, each as its own bytes: never through numpy's
    `tolist()` of an S16 array, which drops a value's trailing zero bytes (one digest in 256 would
    then not match itself)."""
    data = bytes(packed)
    return [data[i:i + size] for i in range(0, len(data), size)]



class PrefixHash:
    """The PREFIX_HASH of a file from offset 0, kept while a reader goes through it: started fresh
    or resumed from a prefix that still matches, fed every chunk read, and asked for the digest of
    the whole lines only (a read that ended in an unterminated line hashes up to its start)."""

    def __init__(self, hasher: Any = None, at: int = 0, *, new: Callable[[], Any] = new_prefix_hasher,
                 vouched: tuple[Path, str] | None = None) -> None:
        self._new = new  # another algorithm only where a digest is compared with one made elsewhere
        # `vouched`: the first `at` bytes of a file taken as hashing to a digest without reading
        # them, (file, digest); they are read only if more are fed (the hash must go on from them)
        self._vouched = vouched
        self._hasher = None if vouched is not None else hasher if hasher is not None else new()
        self.at = at  # bytes hashed so far

    @classmethod
    def resume(cls, path: Path, end: int, expected: str, *,
               new: Callable[[], Any] = new_prefix_hasher, known: WholeFileDigests | None = None) -> PrefixHash | None:
        """Over the first `end` bytes, when they still hash to `expected`; None otherwise. `known`:
        where the whole file's digest may be known already; when the file is exactly those
        `end` bytes as known there, they are not read (most of the prefixes a run after an
        append checks are of partitions it did not touch)."""
        if known is not None and new is new_prefix_hasher and known(path) == (end, expected):
            return cls(at=end, new=new, vouched=(path, expected))
        hasher = prefix_hash(path, end, new)
        return cls(hasher, end, new=new) if hasher is not None and hasher.hexdigest() == expected else None

    def _read_vouched(self) -> None:
        """The hash object over the vouched prefix, read now; the file's bytes are what it holds
        from here on (a prefix that no longer hashes as vouched gives another digest, never the
        vouched one)."""
        assert self._vouched is not None
        path, _ = self._vouched
        self._vouched = None
        hasher = prefix_hash(path, self.at, self._new)
        if hasher is None:  # the file lost bytes under us: a digest no recorded prefix has
            hasher = self._new()
            hasher.update(b"\0prefix unreadable\0")
        self._hasher = hasher

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._vouched is not None:
            self._read_vouched()
        self._hasher.update(chunk)
        self.at += len(chunk)

    def hexdigest(self) -> str:
        """The digest of the `at` bytes hashed so far."""
        if self._vouched is not None:
            return self._vouched[1]
        return str(self._hasher.hexdigest())

    def hexdigest_to(self, path: Path, end: int) -> str | None:
        """The digest of the first `end` bytes (None when the file no longer has them)."""
        if end == self.at:
            return self.hexdigest()
        hasher = prefix_hash(path, end, self._new)
        return None if hasher is None else str(hasher.hexdigest())


class LineEndHash:
    """A PrefixHash fed by a line reader (its `on_chunk`) that also knows where the last complete
    line it read ends and how many newlines it saw: what a cache of "the file up to here" keeps
    (bytes after the last newline are a torn tail, never kept)."""

    def __init__(self, hasher: PrefixHash) -> None:
        self.hasher = hasher
        self.after_newline = 0
        self.newlines = 0

    def __call__(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.newlines += chunk.count(b"\n")
        cut = chunk.rfind(b"\n")
        self.after_newline = self.after_newline + len(chunk) if cut < 0 else len(chunk) - cut - 1

    @property
    def end(self) -> int:
        return self.hasher.at - self.after_newline

    def hexdigest(self, path: Path) -> str | None:
        """The digest of the file up to `end` (None when the file no longer has those bytes)."""
        return self.hasher.hexdigest_to(path, self.end)
