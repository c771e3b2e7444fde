"""What the last rendering of a trainer view covered, so the next one renders only appended rows.

A view is a pure function of its native file's valid rows, line by line (`formats.render_view`),
and the native file is append-only. After a rendering this keeps: the length and hash of the
native file's whole-line prefix it read, how many rows it rendered, the size and hash of each
file it wrote (`distill.hashing.PREFIX_HASH`), and the code it ran under. The next rendering starts from that prefix only when the
native file still starts with exactly those bytes, the code is the same, and every view file still
holds exactly what was written (checked as it is copied into the new file): then the old files
are the rendering of the prefix, and only rows after it are rendered and appended. Anything else
(a rebuilt native file, an edited view, other code) renders the whole view again; the file only
saves work, and losing or damaging it costs one whole rendering.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.hashing import PrefixHash
from distill.jsonl import loads, write_atomic

VIEW_STATE_VERSION = 2  # 2: hashed with xxh3-128, not sha256
COPY_CHUNK = 1 << 20


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
        try:
            state = cls.model_validate(loads(path.read_bytes()))
        except (OSError, ValueError, ValidationError):
            return None
        return state if state.version == VIEW_STATE_VERSION and state.code == code else None

    def resume(self, native: Path) -> PrefixHash | None:
        """The native file's hash over the prefix this rendering covered, when it still starts
        with exactly those bytes."""
        return PrefixHash.resume(native, self.native_end, self.native_hash)

    def save(self, path: Path) -> None:
        write_atomic(path, self.model_dump_json().encode())


class StaleView(Exception):
    """A view file no longer holds what the last rendering wrote: render the view whole."""


class HashingSink:
    """A view file being written: every byte goes to the file and to its hash."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.hash = PrefixHash()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.hash.update(data)
        self.size += len(data)

    def copy_from(self, path: Path, expected: ViewFile) -> None:
        """Start with the old file's bytes, which must be exactly the ones recorded."""
        try:
            with open(path, "rb") as src:
                while chunk := src.read(COPY_CHUNK):
                    self.write(chunk)
        except OSError as exc:
            raise StaleView(f"{path.name}: {exc}") from exc
        if self.size != expected.size or self.hash.hexdigest() != expected.digest:
            raise StaleView(f"{path.name} changed since it was rendered")

    def recorded(self) -> ViewFile:
        return ViewFile(size=self.size, digest=self.hash.hexdigest())
