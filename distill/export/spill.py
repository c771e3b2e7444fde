"""Disk spill for exporters that must see rows out of input order (preference pairing).

Rows are written once to private scratch files (pickled: they are read back by this process
only, so no validation or JSON round trip is paid twice) and read back a bucket at a time, so
memory is bounded by the largest bucket, not by the export. A bucket is chosen by a stable hash
of a grouping key (a task id, a question), so every row of one group lands in one bucket.
"""

from __future__ import annotations

import heapq
import math
import os
import pickle
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

BUCKET_BYTES = 64 * 2**20  # scored-run bytes per bucket: a bucket's light rows stay a few MiB
MAX_BUCKETS = 64  # every bucket's files can be open at once in the final merge (4 per bucket + 1)
WRITE_BUFFER = 1 << 18  # scratch files take many small records (up to ~100 files open at once)
IN_ORDER_BATCH = 256  # records per pickle in a file read back in order (held per file until written)


def bucket_count(input_bytes: int) -> int:
    """How many buckets keep one bucket near BUCKET_BYTES of input, 1 for a small workspace."""
    return max(1, min(MAX_BUCKETS, math.ceil(input_bytes / BUCKET_BYTES)))


def bucket_of(key: str, buckets: int) -> int:
    """Stable across processes and runs (Python's str hash is salted per process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


class RecordFile:
    """Append-only pickled records; `append` returns the offset `read_at` takes.

    With `batch` > 1 the records are pickled `batch` at a time (a list per pickle: far fewer
    calls and writes for files that are only read back in order); such a file has no offsets."""

    def __init__(self, path: Path, *, batch: int = 1) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self.count = 0
        self._sealed = False
        self._batch = batch
        self._pending: list[Any] = []
        self._end = 0  # bytes written

    def _write(self, obj: Any) -> int:
        if self._fh is None:
            self._fh = open(self.path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 - closed by close()
        offset = self._end
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._fh.write(data)
        self._end += len(data)  # kept here: tell() on every write costs a system call
        return offset

    def append(self, record: Any) -> int:
        """The record's offset, or -1 in a batched file (read it back in order)."""
        if self._sealed:
            raise RuntimeError(f"{self.path.name} is sealed: it is being read")
        self.count += 1
        if self._batch == 1:
            return self._write(record)
        self._pending.append(record)
        if len(self._pending) >= self._batch:
            self._write(self._pending)
            self._pending = []
        return -1

    def seal(self) -> None:
        """No more appends: the writer's file handle is released before the file is read."""
        if self._pending:
            self._write(self._pending)
            self._pending = []
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._sealed = True

    def read_at(self, offset: int) -> Any:
        if self._batch != 1:
            raise RuntimeError(f"{self.path.name} is batched: it is read in order only")
        self.seal()
        if self._reader is None:
            self._reader = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._reader.seek(offset)
        return pickle.load(self._reader)

    def __iter__(self) -> Iterator[Any]:
        """Every record in write order, read lazily."""
        self.seal()
        if not self.count:
            return
        with open(self.path, "rb") as fh:
            while True:
                try:
                    obj = pickle.load(fh)
                except EOFError:
                    return
                if self._batch == 1:
                    yield obj
                else:
                    yield from obj

    def close(self) -> None:
        for fh in (self._fh, self._reader):
            if fh is not None:
                fh.close()
        self._fh = self._reader = None


class Spill:
    """A scratch folder of record files, removed on exit; one left by a killed process (its pid is
    in the name) is removed by the next spill in the same place."""

    def __init__(self, parent: Path) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f".spill-{os.getpid()}-", dir=parent))
        self._files: list[RecordFile] = []

    def records(self, name: str, *, batch: int = 1) -> RecordFile:
        f = RecordFile(self.root / f"{name}.pkl", batch=batch)
        self._files.append(f)
        return f

    def buckets(self, name: str, n: int, *, batch: int = 1) -> list[RecordFile]:
        return [self.records(f"{name}-{b}", batch=batch) for b in range(n)]

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for f in self._files:
            f.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_orphans(parent: Path) -> None:
    for folder in parent.glob(".spill-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def merge_sorted(runs: Iterable[Iterable[Any]], key: Callable[[Any], Any]) -> Iterator[Any]:
    """One stream from runs each already sorted by `key`; on a tie the earlier run comes first."""
    return heapq.merge(*runs, key=key)
