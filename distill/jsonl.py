"""Crash-safe JSONL I/O shared by every stage.

Three guarantees (docs/DESIGN.md, invariant 6):
- appends are whole lines written under a file lock, so concurrent writers never interleave;
- whole-file outputs go to a temporary file in the same directory and are renamed over the
  target, so readers see the old file or the new one, never half of one;
- a torn last line (no trailing newline, left by a crash) is detected: readers report it
  instead of parsing it as data, and writers cut it off before appending.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
from filelock import FileLock

from distill.hashing import sealed, unsealed

READ_CHUNK = 1 << 20


def dumps(value: Any) -> bytes:
    """One JSON line (no newline). Sorted keys so equal objects give equal bytes.

    orjson returns its whole output buffer (4 KiB at least) as the bytes object, so a held line of
    100 bytes costs 4 KiB of memory: a copy of the right size is returned instead (a fraction of
    the encoding's cost), because lines are held in batches across the pipeline."""
    try:
        return bytes(memoryview(orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)))
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range for a double")
    return number


# A JSON number starts after one of `:,[`, whitespace or its minus sign. Mapping each digit to "0",
# those bytes to "|" and every other byte to a space, text holds a number of 19 digits or more
# (every integer beyond 64 bits has one) only where its translation holds "|" and 19 zeros: one C
# pass (a regex costs ~10x more per byte), and the digits of a hex digest, which follow a letter
# or a quote, do not trip it.
_NUMBER_SHAPES = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x7C if b in b":,[-\x20\t\r\n" else 0x20 for b in range(256)
)
_ZEROS = b"0" * 19
_LONG_NUMBER = b"|" + _ZEROS


def _stdlib_loads(data: bytes | str) -> Any:
    try:
        return json.loads(data, parse_constant=_not_json_constant, parse_float=_finite_float)
    except RecursionError:
        # arrays or objects nested past the interpreter's recursion limit (orjson refuses them past
        # 1,024 levels and sends them here): bad input like any other, so a ValueError, which every
        # reader already turns into a quarantine row or a one-line error, not a traceback
        raise ValueError("not JSON this reader accepts: arrays or objects nested too deeply") from None


def loads(data: bytes | str) -> Any:
    """Parse one JSON value with orjson, or with the stdlib where orjson would lose or refuse it.

    orjson reads an integer beyond 64 bits as a float without a word (a 128-bit trace id loses
    its low digits, so two rows that differ only there would hash alike and one would be dropped
    as a duplicate): text that may hold a number of 19+ digits goes to the stdlib, which keeps
    every integer exact and reads every other value as orjson does (a string that only looks like
    such a number costs the slower parse, nothing else). So does what orjson refuses (a lone
    surrogate escape), but not NaN, Infinity or a float that overflows: they are not JSON, and
    accepting them would make rows that differ only there hash alike (canonical JSON writes each
    as null)."""
    shapes = (data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data).translate(_NUMBER_SHAPES)
    if _LONG_NUMBER in shapes or shapes.startswith(_ZEROS):  # (or the text is such a number)
        return _stdlib_loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _stdlib_loads(data)


class RawLine(NamedTuple):
    """One physical line of a file, as bytes, with where it starts (a tuple: made once per line).

    `data` is None when the line was longer than the reader's limit: the reader skipped it
    without holding it in memory. `terminated` is False only for a last line with no newline.
    """

    offset: int
    number: int
    data: bytes | None
    length: int
    terminated: bool

    @property
    def too_long(self) -> bool:
        return self.data is None


@dataclass(slots=True)
class ReadProgress:
    """How far a read of one file got in whole lines, kept up to date while it runs: an item
    read from a line that starts before `end` came from a newline-terminated line, and a later
    read can resume at `end` with `lines` lines behind it. `failed`: the file stopped being
    readable part way."""

    end: int = 0
    lines: int = 0
    failed: bool = False


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def utf16_problem(data: bytes) -> str | None:
    """Why `data` is refused when it is UTF-16 text (Windows PowerShell's `>` writes it): mostly
    ASCII then has a NUL byte beside every character, which is valid UTF-8 and so read as a JSON
    error naming no cause. None for anything else (a line without NUL costs one byte scan)."""
    if data.startswith(UTF16_BOMS):
        return "UTF-16 text (it starts with a UTF-16 byte order mark), not UTF-8: re-encode the file as UTF-8"
    if data == b"\x00":  # after a UTF-16LE file's last line break (0A 00) is cut at its 0A
        return "UTF-16 text (the second byte of a UTF-16 line break), not UTF-8: re-encode the file as UTF-8"
    nuls = data.count(b"\x00")
    if len(data) < 4 or nuls * 4 < len(data):
        return None
    even = data[0::2].count(b"\x00")
    if max(even, nuls - even) * 10 < nuls * 9:  # NULs on both byte positions: binary, not UTF-16
        return None
    return "UTF-16 text (a NUL byte beside each character), not UTF-8: re-encode the file as UTF-8"


def iter_raw_lines(
    path: Path,
    max_line_bytes: int | None = None,
    *,
    start: int = 0,
    lines_before: int = 0,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Iterator[RawLine]:
    """Stream the lines of a file with byte offsets; memory stays bounded by max_line_bytes.

    Empty lines (just "\\n") are yielded too so callers can account for every line. `start` (the
    offset of a line start) and `lines_before` resume a read where an earlier one stopped;
    `on_chunk` sees every byte read, in order (a caller hashing what it read).
    """
    limit = max_line_bytes if max_line_bytes is not None else 1 << 62
    with open(path, "rb") as fh:
        if start:
            fh.seek(start)
        offset = start
        number = lines_before
        buf = bytearray()
        line_start = start
        oversize = False
        consumed = 0  # bytes of the current line seen so far (when oversize, buf is dropped)
        while True:
            chunk = fh.read(READ_CHUNK)
            if not chunk:
                break
            if on_chunk is not None:
                on_chunk(chunk)
            pos = 0
            while pos < len(chunk):
                nl = chunk.find(b"\n", pos)
                if nl != -1 and not consumed:
                    # the common case: a whole line inside this chunk, sliced without a copy into buf
                    number += 1
                    size = nl - pos
                    yield RawLine(line_start, number, chunk[pos:nl] if size <= limit else None, size, True)
                    line_start += size + 1
                    pos = nl + 1
                    continue
                end = len(chunk) if nl == -1 else nl
                piece = chunk[pos:end]
                consumed += len(piece)
                if not oversize:
                    if consumed > limit:
                        oversize = True
                        buf.clear()
                    else:
                        buf += piece
                if nl == -1:
                    pos = len(chunk)
                    break
                number += 1
                yield RawLine(
                    offset=line_start,
                    number=number,
                    data=None if oversize else bytes(buf),
                    length=consumed,
                    terminated=True,
                )
                offset = line_start + consumed + 1
                line_start = offset
                buf.clear()
                consumed = 0
                oversize = False
                pos = nl + 1
        if consumed > 0:
            number += 1
            yield RawLine(
                offset=line_start,
                number=number,
                data=None if oversize else bytes(buf),
                length=consumed,
                terminated=False,
            )


def read_line_at(path: Path, offset: int) -> bytes:
    """The line starting at byte `offset`, without its newline (provenance round-trips)."""
    with open(path, "rb") as fh:
        return line_at(fh, offset)


def line_at(fh: IO[bytes], offset: int) -> bytes:
    """read_line_at on a file already open (a caller reading many lines of one file)."""
    fh.seek(offset)
    line = fh.readline()
    return line[:-1] if line.endswith(b"\n") else line


def iter_json(path: Path) -> Iterator[Any]:
    """Parse every complete line of one of our own JSONL outputs; a torn tail is ignored."""
    if not path.exists():
        return
    for raw in iter_raw_lines(path):
        if raw.terminated and raw.data and raw.data.strip():
            yield loads(raw.data)


def json_rows_at(path: Path, numbers: Iterable[int], *, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for the JSON-object lines with these numbers among the complete lines
    that end by byte `end`, in file order: a few rows of a long file, without parsing the rest.
    The lines before them are only counted (`bytes.count` per chunk), not split: a few rows spread
    through a large export cost a read of it, not a Python step per line."""
    wanted = sorted({n for n in numbers if n >= 1})  # lines are numbered from 1
    if not wanted or not path.exists():
        return
    with open(path, "rb") as fh:
        starts = list(_line_starts(fh, wanted, end))
        for number, start in starts:
            fh.seek(start)
            line = fh.readline()
            if start + len(line) > end:
                return  # this line, and every later one, ends past `end`
            if not line.endswith(b"\n"):
                continue  # a torn last line
            try:
                value = loads(line[:-1])
            except ValueError:
                continue
            if isinstance(value, dict):
                yield number, value


def _line_starts(fh: IO[bytes], wanted: list[int], end: int) -> Iterator[tuple[int, int]]:
    """(number, byte offset) of each wanted line (sorted numbers) that starts before `end`: line
    n starts after the file's (n - 1)th newline, found within the one chunk that holds it (line 1
    after the "0th", at -1 of the first chunk)."""
    i = 0
    pos = 0
    newlines = 0  # before pos
    while i < len(wanted) and pos < end:
        chunk = fh.read(min(READ_CHUNK, end - pos))
        if not chunk:
            return
        count = chunk.count(b"\n")
        at, seen = -1, newlines
        while i < len(wanted) and wanted[i] - 1 <= newlines + count:
            while seen < wanted[i] - 1:
                at = chunk.index(b"\n", at + 1)
                seen += 1
            if pos + at + 1 < end:
                yield wanted[i], pos + at + 1
            i += 1
        newlines += count
        pos += len(chunk)


def json_rows(
    path: Path,
    on_junk: Callable[[int, str], None] | None = None,
    *,
    start: int = 0,
    lines_before: int = 0,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every complete JSON-object line of a file. A complete line that is
    not a JSON object (or too long to read) is no row; `on_junk` hears of it, with why. A torn last
    line is not a complete line (an interrupted append; the next append cuts it). `start`,
    `lines_before`, `on_chunk`: as for iter_raw_lines (resume at a line start; see every byte)."""
    if not path.exists():
        return
    for raw in iter_raw_lines(path, start=start, lines_before=lines_before, on_chunk=on_chunk):
        if not raw.terminated:
            continue
        if raw.data is None:
            if on_junk is not None:
                on_junk(raw.number, "line too long to read")
            continue
        if not raw.data.strip():
            continue
        try:
            value = loads(raw.data)
        except ValueError:
            value = None
        if isinstance(value, dict):
            yield raw.number, value
        elif on_junk is not None:
            on_junk(raw.number, "not a JSON object")


def torn_tail_length(path: Path) -> int:
    """Bytes after the last newline (0 when the file ends cleanly or does not exist)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb") as fh:
        step = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - step)
            fh.seek(start)
            block = fh.read(pos - start)
            nl = block.rfind(b"\n")
            if nl != -1:
                return size - (start + nl + 1)
            pos = start
    return size


def repair_torn_tail(path: Path) -> int:
    """Cut a torn last line left by a crashed writer. Returns the number of bytes removed.

    Callers must hold the file's lock (append_lines does).
    """
    torn = torn_tail_length(path)
    if torn:
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - torn)
            fh.flush()
            os.fsync(fh.fileno())
    return torn


def lock_for(path: Path) -> FileLock:
    """The inter-process lock guarding `path` (a sibling `.lock` file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def append_lines(path: Path, lines: Iterable[bytes], *, timeout: float = 60.0, fsync: bool = True) -> int:
    """Append whole lines under the file lock, after repairing a torn tail. Returns lines written.

    The batch is written with write() calls on an O_APPEND descriptor, so a crash leaves either
    the previous content plus whole lines, or a torn tail the next writer repairs. `fsync=False`
    is for derived data that the next run re-derives (evidence): a process crash loses nothing
    either way; only a power cut can drop the unsynced tail, which the next run then re-collects.
    """
    payload = bytearray()
    count = 0
    for line in lines:
        if b"\n" in line:
            raise ValueError("a JSONL line must not contain a raw newline")
        payload += line
        payload += b"\n"
        count += 1
    if not count:
        return 0
    _append_locked(path, [payload], timeout=timeout, fsync=fsync)
    return count


def append_json(path: Path, rows: Iterable[Any], *, timeout: float = 60.0) -> int:
    return append_lines(path, (dumps(r) for r in rows), timeout=timeout)


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Errors only a write gives, which the OS reports without the file's name (not EIO: a read inside
the same block, of another file, can give that one)."""


@contextlib.contextmanager
def write_errors_named(path: Path) -> Iterator[None]:
    """A write error the OS reports without a file name gets `path`: a full disk was `cannot use:
    No space left on device`, with nothing saying where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in WRITE_ERRNOS:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


def _append_locked(path: Path, chunks: Iterable[bytes | bytearray], *, timeout: float, fsync: bool) -> None:
    """Write `chunks` on an O_APPEND descriptor under the file lock, after repairing a torn tail."""
    with lock_for(path).acquire(timeout=timeout):
        repair_torn_tail(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with write_errors_named(path):
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if fsync:
                    os.fsync(fd)
        finally:
            os.close(fd)


def cut_torn_tail(path: Path, *, timeout: float = 60.0) -> None:
    """repair_torn_tail under the file's lock, taken only when there is a torn tail to cut."""
    if torn_tail_length(path):
        with lock_for(path).acquire(timeout=timeout):
            repair_torn_tail(path)


def append_file(path: Path, source: Path, *, timeout: float = 60.0, chunk: int = 1 << 20) -> int:
    """Append the whole lines of `source` to `path` as append_lines does, streamed in chunks
    (a large batch is never held in memory). Returns the bytes appended. With nothing to append,
    a torn tail is still cut: the file is left whole lines, as after any append."""
    size = source.stat().st_size
    if not size:
        cut_torn_tail(path, timeout=timeout)
        return 0

    def chunks() -> Iterator[bytes]:
        last = b""
        with open(source, "rb") as src:
            while block := src.read(chunk):
                last = block[-1:]
                yield block
        if last != b"\n":
            yield b"\n"

    _append_locked(path, chunks(), timeout=timeout, fsync=True)
    return size


def replace_file(path: Path, source: Path, *, timeout: float = 60.0) -> None:
    """Move `source` (a file in the same directory) over `path`, durably and under the file lock
    appends take, so a reader sees the old file or the new one, never a mix."""
    with open(source, "rb+") as fh:
        os.fsync(fh.fileno())
    with lock_for(path).acquire(timeout=timeout):
        os.replace(source, path)


ATOMIC_TEMP = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # the name atomic_writer gives its temporary file


def atomic_temp_path(path: Path) -> Path:
    """Where atomic_writer writes `path`'s new bytes before the rename (named by ATOMIC_TEMP)."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


@contextlib.contextmanager
def atomic_writer(path: Path, *, keep: Callable[[], bool] | None = None) -> Iterator[IO[bytes]]:
    """Write a whole file through a temp file in the same directory, then rename over `path`.
    `keep`, asked once the bytes are written: False drops them and leaves `path` as it is.

    On an exception (Ctrl-C and SIGTERM included) the temp file is removed and `path` is left
    untouched. The temp name is chosen before the file exists, so an interrupt that lands right
    after the file is created still knows what to remove; the removal is the handler's first call
    (an interrupt is raised between Python calls: the fewer before it, the smaller the window in
    which a second one could skip it), and a file that is not kept goes the normal way, not
    through an exception. Mode 0644 (less the umask), like appends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_temp_path(path)
    with write_errors_named(path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                yield fh
                wanted = keep is None or keep()
                if wanted:
                    fh.flush()
                    os.fsync(fh.fileno())
            if wanted:
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


class _KeptPrefix:
    """What `prefix_keeping_writer` yields: the new content, compared with the file's whole lines
    while it is the same bytes, then written to a scratch file (the bytes after them, or all of
    it from the first difference on)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.old: IO[bytes] | None = None
        self.whole = 0  # bytes of the old file's whole lines (a torn tail is never kept)
        try:
            self.old = open(path, "rb")  # noqa: SIM115 - closed by close()
            self.whole = os.fstat(self.old.fileno()).st_size - torn_tail_length(path)
        except OSError:  # none, or not one to read: the new content replaces whatever is there
            if self.old is not None:
                self.old.close()
            self.old, self.whole = None, 0
        self.matched = 0  # bytes of the new content that are the old file's, so far
        self.rewrite = self.old is None  # a new file is written whole (atomically)
        self.tmp: Path | None = None  # the scratch file: the bytes after the kept ones, or the whole new file
        self.out: IO[bytes] | None = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        if self.out is None and not self.rewrite:
            n = min(len(view), self.whole - self.matched)
            assert self.old is not None
            if n and self.old.read(n) != view[:n]:
                self._start(rewrite=True)  # the old bytes up to here, then this block whole
            else:
                self.matched += n
                view = view[n:]
                if not view:
                    return len(data)
                self._start(rewrite=False)  # the old file's lines are all kept: the rest is new
        if self.out is None:
            self._start(rewrite=True)
        assert self.out is not None
        self.out.write(view)
        return len(data)

    def _start(self, *, rewrite: bool) -> None:
        self.rewrite = rewrite
        self.tmp = atomic_temp_path(self.path)
        self.out = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb")
        if rewrite and self.matched:
            assert self.old is not None
            _copy_head(self.old, self.out, self.matched)

    def commit(self) -> None:
        if self.out is None:
            if self.rewrite or self.matched < self.whole:
                self._start(rewrite=True)  # nothing new, or less than the file held: written whole
            else:
                # the same lines: the file is left as it is, but for a crashed writer's torn tail
                cut_torn_tail(self.path)
                return
        assert self.out is not None and self.tmp is not None
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        if self.rewrite:
            os.replace(self.tmp, self.path)
        else:
            append_file(self.path, self.tmp)
            os.unlink(self.tmp)

    def close(self) -> None:
        for fh in (self.old, self.out):
            if fh is not None:
                fh.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def _copy_head(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    """The first `size` bytes of `src` to `dst` (at its position): in the kernel where the file
    system can (copy_file_range), else through a buffer."""
    src.seek(0)
    left = size
    try:
        while left:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), left)
            if not copied:
                break
            left -= copied
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            raise
    src.seek(size - left)
    while left:
        block = src.read(min(left, 1 << 20))
        if not block:
            raise OSError(errno.EIO, "the file lost bytes while it was rewritten")
        dst.write(block)
        left -= len(block)


@contextlib.contextmanager
def prefix_keeping_writer(path: Path) -> Iterator[IO[bytes]]:
    """A whole file's new content, written so that what it keeps of the old file is not written
    again: when it begins with the file's whole lines, only the bytes after them are appended (as
    append_file appends, under the file's lock, synced; a crash leaves the old lines and at most a
    torn tail the next writer cuts), and a file given the same bytes is not touched at all (its
    inode, mtime and digests stay). Any other content replaces the file atomically, as
    atomic_writer does. Each run rewrites an export's quarantine file in input order; after rows
    were appended to the newest partitions (the usual periodic run) the new file is the old one
    plus lines, and its receipt and line checks can then go on from where they stopped. The old
    file is read once to compare (cheaper than writing it again); on an exception `path` is left
    as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _KeptPrefix(path)
    try:
        with write_errors_named(path):
            yield writer  # type: ignore[misc]
            writer.commit()
    finally:
        writer.close()


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_sealed(path: Path, data: bytes) -> None:
    """A cache file: `data` followed by its own seal (`distill.hashing.sealed`), written atomically."""
    write_atomic(path, sealed(data))


def read_sealed(path: Path) -> bytes | None:
    """What `write_sealed` was given, or None when the file is missing, unreadable or any byte of
    it changed: a cache that is not exactly as written is no cache (its work is done again)."""
    try:
        return unsealed(path.read_bytes())
    except OSError:
        return None


def write_named_file(path: Path, data: bytes) -> None:
    """Write a file the user named on the command line (`--sarif`, `--markdown`). A regular file
    is replaced atomically (through a symlink: its target, the link stays); anything else that
    exists (/dev/stdout, /dev/null, a FIFO) is written to as it is: renaming over it replaced the
    device itself (`--sarif /dev/zero` as root left /dev/zero a regular file). A failure is one line."""
    import stat

    from distill.errors import UsageError

    try:
        try:
            mode = path.stat().st_mode  # through symlinks
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise UsageError(f"{path} is a directory, not a file to write")
        if mode is not None and not stat.S_ISREG(mode):
            with open(path, "wb") as fh:
                fh.write(data)
            return
        write_atomic(path.resolve() if path.is_symlink() else path, data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_if_changed(path: Path, data: bytes, *, current: bytes | None = None) -> bool:
    """Atomically replace `path` with `data` unless it already holds exactly those bytes, so an
    unchanged derived file keeps its bytes and mtime. `current` saves a read when the caller
    already has the file's content. Returns whether it wrote."""
    if current is None:
        current = path.read_bytes() if path.exists() else None
    if current == data and path.exists():
        return False
    write_atomic(path, data)
    return True


class HeldWrites:
    """Bytes for a file, held until `held_bytes` and then written in one call (short writes of an
    unbuffered file looped over). With an unbuffered file behind it, a writer that may have to cut
    the file back simply drops what it still holds: no buffered tail reaches the file after the
    cut. `on_block`: each block as it is written (to hash it)."""

    def __init__(self, fh: Any, held_bytes: int, on_block: Callable[[bytes], None] | None = None) -> None:
        self.fh = fh
        self.held_bytes = held_bytes
        self.on_block = on_block
        self._held: list[bytes] = []
        self._bytes = 0

    @property
    def held(self) -> int:
        """Bytes given and not yet written."""
        return self._bytes

    def write(self, data: bytes) -> None:
        self._held.append(data)
        self._bytes += len(data)
        if self._bytes >= self.held_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        block = b"".join(self._held)
        self._held.clear()
        self._bytes = 0
        view = memoryview(block)
        while view:
            written = self.fh.write(view)
            view = view[written if written is not None else len(view):]
        if self.on_block is not None:
            self.on_block(block)


class LineSink:
    """Lines on their way to a file (or nowhere, for a dry run), hashed as they go."""

    def __init__(self, fh: IO[bytes] | HeldWrites | None, *, sha256: Any = None, size: int = 0) -> None:
        """`sha256`/`size`: a hash of (and the length of) bytes already in the file the lines go after."""
        self._fh = fh
        self.sha256 = sha256 if sha256 is not None else hashlib.sha256()
        self.size = size

    def write_line(self, line: bytes) -> None:
        self.write_block(line + b"\n")

    def write_block(self, data: bytes) -> None:
        """Whole lines as they are (each ending with a newline)."""
        self.sha256.update(data)
        self.size += len(data)
        if self._fh is not None:
            self._fh.write(data)


@contextlib.contextmanager
def replace_if_changed(path: Path, *, current: tuple[str, int] | None, write: bool = True) -> Iterator[LineSink]:
    """write_if_changed for a file streamed line by line: the lines go through atomic_writer and
    `path` is replaced only when their sha256 and size differ from `current` (those of what it
    holds, None when nothing), so an unchanged derived file keeps its bytes and mtime and the new
    content is never held whole. `write=False` (a dry run) only hashes."""
    if not write:
        yield LineSink(None)
        return
    sinks: list[LineSink] = []

    def changed() -> bool:
        return current != (sinks[0].sha256.hexdigest(), sinks[0].size) or not path.exists()

    with atomic_writer(path, keep=changed) as fh:
        sinks.append(LineSink(fh))
        yield sinks[0]


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> int:
    """Replace `path` with one JSON line per row. Returns the number of rows."""
    count = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write(b"\n")
            count += 1
    return count
