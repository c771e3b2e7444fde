"""What the last rendering of a trainer view covered, so the next one renders only appended rows.

A view is a pure function of its native file's valid rows, line by line (`formats.render_view`),
and the native file is append-only. After a rendering this keeps: the length and hash of the
native file's whole-line prefix it read, how many rows it rendered, the size and hash of each
file it wrote (`distill.hashing.PREFIX_HASH`), and the code it ran under. The next rendering starts from that prefix only when the
native file still starts with exactly those bytes, the code is the same, and every view file still
holds exactly what was written (each is read and hashed before anything is written to it): then
the old files are the rendering of the prefix, and the rows after it are rendered and appended to
them in place (`appending`), as the native file itself grows. Anything else (a rebuilt native
file, an edited view, a view left longer by an interrupted append, other code) renders the whole
view again into new files that replace the old ones; the state only saves work, and losing or
damaging it costs one whole rendering.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.hashing import PrefixHash
from distill.jsonl import HeldWrites, loads, read_sealed, write_sealed

VIEW_STATE_VERSION = 2  # 2: hashed with xxh3-128, not sha256
COPY_CHUNK = 1 << 20
HELD_BYTES = 1 << 20  # what a HashingSink holds before it writes


class ViewFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    digest: str  # PREFIX_HASH of the file as written


class ViewState(BaseModel):
    """One view's last rendering (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = VIEW_STATE_VERSION
    code: str
    native_end: int = Field(ge=0)  # the native file's bytes read, up to the end of its last whole line
    native_lines: int = Field(ge=0)  # newlines in them (line numbers go on from here)
    native_hash: str
    rows: int = Field(ge=0)  # view rows rendered from them
    files: dict[str, ViewFile]

    @classmethod
    def load(cls, path: Path, code: str) -> ViewState | None:
        """The state saved under this code; None when missing, damaged or of other code."""
        data = read_sealed(path)
        if data is None:
            return None
        try:
            state = cls.model_validate(loads(data))
        except (ValueError, ValidationError):
            return None
        return state if state.version == VIEW_STATE_VERSION and state.code == code else None

    def resume(self, native: Path) -> PrefixHash | None:
        """The native file's hash over the prefix this rendering covered, when it still starts
        with exactly those bytes."""
        return PrefixHash.resume(native, self.native_end, self.native_hash)

    def save(self, path: Path) -> None:
        write_sealed(path, self.model_dump_json().encode())


class StaleView(Exception):
    """A view file no longer holds what the last rendering wrote: render the view whole."""


class HashingSink:
    """A view file being written: every byte goes to the file and to its hash, held up to
    HELD_BYTES and written in one call (`jsonl.HeldWrites`: the file can be unbuffered, so that
    `appending` can cut it back without a buffered tail reaching it later)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.hash = PrefixHash()
        self.size = 0
        self._writes = HeldWrites(fh, HELD_BYTES, on_block=self._written)

    def _written(self, block: bytes) -> None:
        self.hash.update(block)
        self.size += len(block)

    def write(self, data: bytes) -> None:
        self._writes.write(data)

    def flush(self) -> None:
        self._writes.flush()

    def take_over(self, name: str, expected: ViewFile) -> None:
        """Start from what the file already holds, which must be exactly the bytes recorded: read
        (and hashed) to its end, where the next write goes."""
        try:
            while chunk := self.fh.read(COPY_CHUNK):
                self.hash.update(chunk)
                self.size += len(chunk)
        except OSError as exc:
            raise StaleView(f"{name}: {exc}") from exc
        if self.size != expected.size or self.hash.hexdigest() != expected.digest:
            raise StaleView(f"{name} changed since it was rendered")

    def recorded(self) -> ViewFile:
        self.flush()
        return ViewFile(size=self.size, digest=self.hash.hexdigest())


@contextlib.contextmanager
def appending(paths: dict[str, Path], recorded: dict[str, ViewFile]) -> Iterator[dict[str, HashingSink]]:
    """The view files, each opened to append to after `HashingSink.take_over` checked it (StaleView
    before anything is written when one does not hold its recorded bytes). On success every file
    is written out and synced; on an error or an interrupt each is cut back to its recorded size,
    so the view is what it was. A process killed while appending leaves files longer than the
    state says (lines whole or one torn): the next rendering finds them changed and renders the
    whole view again."""
    with contextlib.ExitStack() as stack:
        sinks: dict[str, HashingSink] = {}
        for name, path in paths.items():
            try:
                fh = stack.enter_context(open(path, "r+b", buffering=0))
            except OSError as exc:
                raise StaleView(f"{path.name}: {exc}") from exc
            sink = HashingSink(fh)
            sink.take_over(path.name, recorded[name])
            sinks[name] = sink
        try:
            yield sinks
            for sink in sinks.values():
                sink.flush()
                os.fsync(sink.fh.fileno())
        except BaseException:
            for name, sink in sinks.items():
                with contextlib.suppress(OSError):
                    os.ftruncate(sink.fh.fileno(), recorded[name].size)
            raise
