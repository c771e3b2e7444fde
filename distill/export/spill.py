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
MAX_BUCKETS = 64  # every bucket's file can be open at once in the final merge (2 phases + 1)


def bucket_count(input_bytes: int) -> int:
    """How many buckets keep one bucket near BUCKET_BYTES of input, 1 for a small workspace."""
    return max(1, min(MAX_BUCKETS, math.ceil(input_bytes / BUCKET_BYTES)))


def bucket_of(key: str, buckets: int) -> int:
    """Stable across processes and runs (Python's str hash is salted per process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


class RecordFile:
    """Append-only pickled records; `append` returns the offset `read_at` takes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self.count = 0
        self._sealed = False

    def append(self, record: Any) -> int:
        if self._sealed:
            raise RuntimeError(f"{self.path.name} is sealed: it is being read")
        if self._fh is None:
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        offset = self._fh.tell()
        self._fh.write(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        self.count += 1
        return offset

    def seal(self) -> None:
        """No more appends: the writer's file handle is released before the file is read."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._sealed = True

    def read_at(self, offset: int) -> Any:
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
                    yield pickle.load(fh)
                except EOFError:
                    return

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

    def records(self, name: str) -> RecordFile:
        f = RecordFile(self.root / f"{name}.pkl")
        self._files.append(f)
        return f

    def buckets(self, name: str, n: int) -> list[RecordFile]:
        return [self.records(f"{name}-{b}") for b in range(n)]

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
