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

Files are named relative to the cache file's folder (the workspace root), so a workspace moved or
restored elsewhere keeps its tallies. A fold that counts no values (`key=None`, the integrity
check's) is the same for every fold of the same bytes: it is taken from another fold's tally of
the file when that tally covers exactly the bytes the caller digested, so a receipt that counts an
output's categories and then checks its lines reads the appended lines once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from distill.hashing import FileState, PrefixHash, file_size, file_state
from distill.jsonl import dumps, iter_raw_lines, loads, write_atomic

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


def fold_lines(path: Path, key: RowKey | None, start: Tally | None = None, on_chunk: Callable[[bytes], None] | None = None) -> Tally:
    """Fold the complete lines of `path` after `start` (from the beginning when None)."""
    tally = start.copy() if start is not None else Tally()
    tally.torn = None
    values = tally.values
    for raw in iter_raw_lines(path, start=tally.end, lines_before=tally.lines, on_chunk=on_chunk):
        if not raw.terminated:
            tally.torn = raw.length
            break
        tally.lines = raw.number
        tally.end = raw.offset + raw.length + 1
        data = raw.data
        if not data or not data.strip():
            continue  # blank, or too long to hold: neither a row nor a bad line
        tally.nonblank += 1
        try:
            row = loads(data)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            tally.bad += 1
            if tally.first_bad is None:
                tally.first_bad = raw.number
            continue
        if key is not None and (value := key(row)) is not None:
            values[value] = values.get(value, 0) + 1
    return tally


class FoldCache:
    """Tallies by (file, fold name), loaded from and saved to one workspace file.

    A fold's name stands for its key function: change what a fold counts, change its name.
    """

    def __init__(self, path: Path | None = None, entries: dict[tuple[str, str], _Entry] | None = None,
                 on_disk: FileState | None = None) -> None:
        self.path = path
        self._changed: dict[tuple[str, str], _Entry] = {}
        self._adopt(entries or {})
        self._on_disk = on_disk  # the file as this cache last read or wrote it

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

    @classmethod
    def load(cls, path: Path) -> FoldCache:
        """The saved cache, or an empty one when it is missing, unreadable or of another version.
        One cache can serve a whole run: `save` after each use merges only what another process
        saved meanwhile."""
        on_disk = _state(path)  # before the read: a save in between is then seen as a change
        return cls(path, _read(path), on_disk)

    def tally(self, file: Path, fold: str, key: RowKey | None = None, *, sha256: str | None = None) -> Tally:
        """The fold of `file`'s complete lines. `sha256`: the whole file's digest when the caller
        already has it, so an unchanged file is not even re-hashed."""
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
        if entry is not None:
            hasher = PrefixHash.resume(file, entry.tally.end, entry.sha256, new=hashlib.sha256)
            if hasher is not None:
                start = entry.tally
        if hasher is None:
            hasher = PrefixHash(new=hashlib.sha256)
        tally = fold_lines(file, key, start, on_chunk=hasher.update)
        digest = hasher.hexdigest_to(file, tally.end)
        if digest is not None:
            self._keep(name, fold, _Entry(digest, replace(tally.copy(), torn=None)))
        return tally

    def save(self) -> None:
        """Write this cache's new tallies over what is on disk now (another command may have saved
        its own meanwhile: the file is read again only when it changed since this cache last read
        or wrote it), dropping entries of files that no longer exist."""
        if self.path is None or not self._changed:
            return
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
        payload = {"version": FOLD_CACHE_VERSION, "entries": entries}
        try:
            write_atomic(self.path, dumps(payload) + b"\n")
        except OSError:
            return  # a cache that cannot be written costs the next run a full read, nothing more
        self._on_disk = _state(self.path)
        self._changed.clear()


def _read(path: Path) -> dict[tuple[str, str], _Entry]:
    try:
        saved = loads(path.read_bytes())
        if not isinstance(saved, dict) or saved.get("version") != FOLD_CACHE_VERSION:
            return {}
        return dict(_Entry.from_json(item) for item in saved["entries"])
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _state(path: Path) -> FileState | None:
    try:
        return file_state(path.stat())
    except OSError:
        return None
