"""Building, validating, writing and finding receipts.

I/O lives here (hashing files, re-reading outputs, asking git, writing under ROOT/reports);
the decisions built on it (resume, drift) are pure functions elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from distill.errors import DistillError
from distill.fold_cache import FoldCache, WriterTally
from distill.hashing import WholeFileDigests, canonical_json, file_state, new_prefix_hasher, sha256_hex
from distill.jsonl import dumps, loads, read_sealed, write_atomic, write_sealed
from distill.records.receipts import (
    DeterminismFinding,
    FileDigest,
    GitInfo,
    ResumeDecision,
    ReuseRef,
    RunSummary,
    StageReceipt,
    ValidationResult,
    aggregate_hash,
    receipt_content_hash,
)
from distill.records.stage import StageReport
from distill.sha256_state import Sha256State
from distill.sha256_state import available as sha256_state_available
from distill.workspace import TRANSIENT_SUFFIXES, Workspace, is_data

CHUNK = 1 << 20
LATEST_NAME = "latest.json"


# ---------------------------------------------------------------- hashing files


StatKey = tuple[str, int, int, int, int]
"""(absolute path, inode, size, mtime_ns, ctime_ns): what a file's content is recognised by."""
Digested = tuple[int, str, int | None, str, str | None]
"""(size, sha256, newline count for JSONL else None, PREFIX_HASH, the sha256's state hex or None)
of a whole file; the state (distill.sha256_state, kept for files of STATE_MIN_BYTES or more) lets
the next digest of the file, grown by an append, hash only the bytes after it."""
STATE_MIN_BYTES = 1 << 20


def stat_key(path: Path, st: os.stat_result | None = None) -> StatKey:
    """The file's StatKey now (`st`: a stat the caller already took); raises OSError."""
    return (str(path), *file_state(st if st is not None else path.stat()))

DIGEST_CACHE_VERSION = 3  # 2: each file's PREFIX_HASH beside its sha256; 3: the sha256's state
RACY_MARGIN_NS = 1_000_000_000
"""A digest is kept across runs only if the file's last change happened before hashing began: a
file changed again later gets a newer ctime (the kernel sets it, `touch` cannot set it back), so a
same-size rewrite is never mistaken for the hashed content, as long as "before" is told apart at the
file system's timestamp granularity. Where the cache has a clock file on the file's file system
(`DigestCache.clock`), "before" is read off that file system's own clock: the clock file's ctime,
set just before the file is looked at, must be later than the file's (exact at any granularity,
the way git's index tells racily clean entries). Elsewhere the file's last change must be this much
older than the moment hashing began (by the system clock)."""


class _DigestCacheFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[2, 3]  # a version-2 file's entries have no state
    entries: list[tuple[str, int, int, int, int, int, str, int | None, str, str | None]
                  | tuple[str, int, int, int, int, int, str, int | None, str]]


class DigestCache:
    """File digests by stat key: one run hashes each file once, and with `load`/`save` an unchanged
    workspace is not re-read by the next run (git's index does the same). Only entries looked up or
    hashed in this run are saved, so deleted files do not accumulate.

    `clock`: a file this cache may touch (the workspace's `.distill.clock`) to read the file
    system's clock before it hashes a file (RACY_MARGIN_NS): then what a stage wrote just before its
    receipt hashed it is saved too, instead of being hashed again by the next run."""

    def __init__(self, entries: dict[StatKey, Digested] | None = None, *,
                 clock: Path | None = None) -> None:
        self._loaded = entries or {}
        self._used: dict[StatKey, Digested] = {}
        self._hashed_at: dict[StatKey, tuple[int, bool]] = {}  # (time, read off the file's own file system)
        self.clock = clock
        # `cuts(path)`: offsets whose sha256 someone will ask for (the fold cache's counted
        # prefixes); a file hashed in this run keeps its hash state at each, by the stat key it
        # was hashed under, so a grown file's prefix is not read and hashed a second time
        self.cuts: Callable[[Path], Iterable[int]] | None = None
        self._states: dict[StatKey, dict[int, Any]] = {}
        self._resumable: dict[str, list[tuple[StatKey, Digested]]] = {}  # by path: the digests with a sha256 state
        for key, value in self._loaded.items():
            self._may_resume(key, value)

    def _may_resume(self, key: StatKey, value: Digested) -> None:
        if value[4] is not None:
            self._resumable.setdefault(key[0], []).append((key, value))

    def earlier(self, key: StatKey) -> Digested | None:
        """The largest digest with a sha256 state (saved by the last run or taken in this one) of
        the file `key` names as it is now, of the same inode and at most its size: what the file
        may have grown from by appends (its PREFIX_HASH tells whether it did; a file replaced
        whole, as an atomic write replaces it, has another inode and is not asked)."""
        fits = [d for k, d in self._resumable.get(key[0], ()) if k[1] == key[1] and 0 < d[0] <= key[2]]
        return max(fits, key=lambda d: d[0], default=None)

    def keep_states(self, key: StatKey, states: dict[int, Any]) -> None:
        """The sha256 states at the cuts of the file hashed under `key` (prefix_state hands them out)."""
        self._states[key] = states

    def prefix_state(self, path: Path, end: int) -> Any | None:
        """A sha256 object over the first `end` bytes of `path` as it is now (a copy: the caller
        may go on hashing), when this run hashed the file in this very state; else None."""
        try:
            key = stat_key(path)
        except OSError:
            return None
        state = self._states.get(key, {}).get(end)
        return None if state is None else state.copy()

    def get(self, key: StatKey) -> Digested | None:
        hit = self._used.get(key)
        if hit is None and (hit := self._loaded.get(key)) is not None:
            self._used[key] = hit
        return hit

    def _as_it_is(self, path: Path) -> Digested | None:
        """What this cache knows of the file in its present state (no read); None when nothing."""
        try:
            return self.get(stat_key(path))
        except OSError:
            return None

    def sha256_of(self, path: Path) -> str | None:
        """The file's sha256 when this cache knows the file in its present state (no read)."""
        hit = self._as_it_is(path)
        return None if hit is None else hit[1]

    def sha256_lines_of(self, path: Path) -> tuple[str, int | None] | None:
        """(sha256, complete-line count for JSONL) of the file when this cache knows it in its
        present state (no read): score asks it of a mirror it would otherwise hash only to see
        that the mirror is as its checkpoint wrote it."""
        hit = self._as_it_is(path)
        return None if hit is None else (hit[1], hit[2])

    def xxh3_of(self, path: Path) -> tuple[int, str] | None:
        """(size, PREFIX_HASH) of the file when this cache knows it in its present state (no
        read): a checkpoint that hashed the whole file then need not read it again
        (distill.hashing.WholeFileDigests)."""
        hit = self._as_it_is(path)
        return None if hit is None else (hit[0], hit[3])

    def mark(self) -> tuple[int, int] | None:
        """(device, ctime_ns) of the clock file, touched now: the file system's time at this moment.
        None without a clock file or when it cannot be touched (then the system clock is used)."""
        if self.clock is None:
            return None
        try:
            self.clock.touch()
            st = self.clock.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ctime_ns

    def put(self, key: StatKey, value: Digested, hashed_at_ns: int, *,
            fs_clock: bool = False) -> None:
        """`hashed_at_ns`: a moment before the file was stat'ed, by the system clock, or with
        `fs_clock` by the file's file system (a `mark` on the same device)."""
        self._used[key] = value
        self._hashed_at[key] = (hashed_at_ns, fs_clock)
        self._may_resume(key, value)

    def persistable(self) -> list[tuple[StatKey, Digested]]:
        """Entries safe to trust in a later run: loaded ones (already checked when saved) and those
        whose file had stopped changing before it was hashed."""
        return sorted((key, value) for key, value in self._used.items() if self._settled(key))

    def _settled(self, key: StatKey) -> bool:
        hashed = self._hashed_at.get(key)
        if hashed is None:
            return True
        at, fs_clock = hashed
        return max(key[3], key[4]) < (at if fs_clock else at - RACY_MARGIN_NS)

    def _settled_hit(self, path: Path) -> Digested | None:
        """_as_it_is, only when the file had stopped changing before it was hashed (a write in the
        same clock tick as the hashing would leave its stat key as it was)."""
        try:
            key = stat_key(path)
        except OSError:
            return None
        hit = self.get(key)
        return None if hit is None or not self._settled(key) else hit

    def settled_sha256_of(self, path: Path) -> str | None:
        """sha256_of, on _settled_hit's terms."""
        hit = self._settled_hit(path)
        return None if hit is None else hit[1]

    def settled_xxh3_of(self, path: Path) -> tuple[int, str] | None:
        """xxh3_of, on _settled_hit's terms."""
        hit = self._settled_hit(path)
        return None if hit is None else (hit[0], hit[3])

    @classmethod
    def load(cls, path: Path, *, clock: Path | None = None) -> DigestCache:
        """The saved cache, or an empty one when it is missing, unreadable or of another version
        (a cache only saves work: losing it costs one re-hash, never a wrong digest)."""
        data = read_sealed(path)  # a changed byte would be a wrong sha256 in a receipt
        if data is None:
            return cls(clock=clock)
        try:
            saved = _DigestCacheFile.model_validate_json(data)
        except ValueError:
            return cls(clock=clock)
        return cls({(e[0], e[1], e[2], e[3], e[4]): (e[5], e[6], e[7], e[8], e[9] if len(e) > 9 else None)
                    for e in saved.entries}, clock=clock)

    def save(self, path: Path) -> None:
        entries = [(*key, *value) for key, value in self.persistable()]
        write_sealed(path, dumps({"version": DIGEST_CACHE_VERSION, "entries": entries}))


def saved_digest_cache(ws: Workspace) -> DigestCache:
    """The digests the workspace's last run saved, to be asked and never saved by a stage: what a
    stage resuming from its checkpoints checks an unchanged file by instead of reading it."""
    return DigestCache.load(ws.digest_cache_path)


def saved_whole_file_digests(ws: Workspace) -> WholeFileDigests:
    """saved_digest_cache's whole-file xxh3 digests: what a checkpoint's prefix check asks."""
    return saved_digest_cache(ws).xxh3_of


def rel_path(ws: Workspace, path: Path) -> str:
    """ws.relative without a realpath per call (paths built from ws.root are already resolved)."""
    text = os.fspath(path)  # a Path's text is already normalised (no "." parts, no doubled separators)
    root = os.fspath(ws.root)
    if text.startswith(root + os.sep) and os.path.isabs(text):
        parts = text[len(root) + 1 :].split(os.sep)
        if ".." not in parts:
            return "/".join(parts)
    return ws.relative(path)


def digest_file(ws: Workspace, path: Path, cache: DigestCache | None = None) -> FileDigest:
    """Bytes, sha256 and (for JSONL) complete-line count of one file, in one streaming pass."""
    key = None
    hashed_at, fs_clock = 0, False
    if cache is not None:
        hashed_at = time.time_ns()  # before the stat: the racy-margin rule compares against it
        st = path.stat()
        key = stat_key(path, st)
        hit = cache.get(key)
        if hit is not None:
            return FileDigest(path=rel_path(ws, path), kind="file", bytes=hit[0], sha256=hit[1], records=hit[2])
        mark = cache.mark()  # a miss is about to read the whole file: two more system calls are nothing
        if mark is not None and mark[0] == st.st_dev:
            # the mark is later than the stat, so the stat is taken again after it
            st = path.stat()
            key = stat_key(path, st)
            hashed_at, fs_clock = mark[1], True
    cuts = sorted(set(cache.cuts(path))) if cache is not None and cache.cuts is not None else []
    earlier = cache.earlier(key) if cache is not None and key is not None else None
    size, sha, newlines, states, xxh3, state = sha256_size_newlines_cut(path, cuts, earlier=earlier)
    records = newlines if path.suffix == ".jsonl" else None
    if cache is not None and key is not None:
        cache.put(key, (size, sha, records, xxh3, state), hashed_at, fs_clock=fs_clock)
        if states:
            cache.keep_states(key, states)
    return FileDigest(path=rel_path(ws, path), kind="file", bytes=size, sha256=sha, records=records)


def sha256_size_newlines(path: Path) -> tuple[int, str, int]:
    """Size, sha256 and newline count of a file, in one streaming pass (raises OSError)."""
    size, sha, newlines, _, _, _ = sha256_size_newlines_cut(path, [])
    return size, sha, newlines


def sha256_size_newlines_cut(path: Path, cuts: list[int], *, earlier: Digested | None = None
                              ) -> tuple[int, str, int, dict[int, Any], str, str | None]:
    """sha256_size_newlines, a copy of the sha256 state after the first `cut` bytes for each of
    the (sorted) `cuts` inside the file, taken on the way, the file's PREFIX_HASH (~2 % of the
    sha256's cost: what lets a checkpoint of the whole file skip reading it next time) and the
    sha256's state hex (None for a file under STATE_MIN_BYTES, or without distill.sha256_state).
    `earlier`: a digest of what the file may have grown from; when its first bytes still have
    that PREFIX_HASH, they are read for it and the newline count only, and the sha256 goes on
    from the saved state (a cut inside them gets no state: its asker reads it)."""
    with open(path, "rb") as fh:
        grown = _grown_from(fh, earlier) if earlier is not None else None
        if grown is None:
            fh.seek(0)
            h, prefix, size, newlines = new_sha256(), new_prefix_hasher(), 0, 0
        else:
            h, prefix, size, newlines = grown
        states: dict[int, Any] = {size: h.copy()} if size in cuts else {}
        pending = [c for c in cuts if c > size]
        while chunk := fh.read(CHUNK):
            at = 0
            while pending and pending[0] <= size + len(chunk):
                cut = pending.pop(0)
                h.update(chunk[at:cut - size])
                at = cut - size
                states[cut] = h.copy()
            h.update(chunk[at:] if at else chunk)
            prefix.update(chunk)
            size += len(chunk)
            newlines += _newlines(chunk)
    state = h.state().hex() if isinstance(h, Sha256State) and size >= STATE_MIN_BYTES else None
    return size, h.hexdigest(), newlines, states, str(prefix.hexdigest()), state


def _newlines(chunk: bytes) -> int:
    """The newlines in `chunk`: numpy's vectorised compare counts them ~2x faster than
    bytes.count, and a receipt counts the lines of every JSONL output it hashes."""
    return int(np.count_nonzero(np.frombuffer(chunk, dtype=np.uint8) == 10))


def new_sha256() -> Any:
    """A sha256 whose state can be kept (distill.sha256_state) where OpenSSL's functions are there."""
    return Sha256State() if sha256_state_available() else hashlib.sha256()


def _grown_from(fh: IO[bytes], earlier: Digested) -> tuple[Sha256State, Any, int, int] | None:
    """(sha256 at the end of `earlier`'s bytes, PREFIX_HASH over them, their size, their newlines)
    when the file starts with exactly the bytes `earlier` was taken of; None otherwise. Their
    newlines are counted only when `earlier` has no count (it has one for JSONL): the PREFIX_HASH
    that vouches for the state vouches for the count."""
    size, _, records, xxh3, state = earlier
    if state is None:
        return None
    try:
        h = Sha256State(bytes.fromhex(state), size)
    except ValueError:  # not a state of that many bytes (a damaged cache): hash from the start
        return None
    prefix = new_prefix_hasher()
    newlines = records or 0
    read = 0
    while read < size and (chunk := fh.read(min(CHUNK, size - read))):
        prefix.update(chunk)
        if records is None:
            newlines += _newlines(chunk)
        read += len(chunk)
    return (h, prefix, size, newlines) if read == size and prefix.hexdigest() == xxh3 else None


def digest_dir(ws: Workspace, path: Path, cache: DigestCache | None = None) -> FileDigest:
    """A directory as one digest: sorted (relative path, sha256) of every file in it."""
    entries = []
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file() and is_data(p.name)):
        d = digest_file(ws, file, cache)
        entries.append((file.relative_to(path).as_posix(), d.sha256))
        total += d.bytes
    return FileDigest(path=rel_path(ws, path), kind="dir", bytes=total, sha256=sha256_hex(canonical_json(entries)))


def digest_tree_listing(path: Path, *, stored: str | None = None) -> FileDigest:
    """What a tree holds by name, not content: export's repo_root (which cited files exist) and
    collect's _kb/ (an entry no source can read, such as a FIFO, a device, a broken link or a
    name that is not UTF-8, is an input too: a new one makes collect run and say so). Every
    folder and file name below it, as bytes (a name need not be UTF-8), lock and temp files left
    out (they come and go with the commands that write next to them). `stored`: the name the
    digest gives the tree (default: its resolved path)."""
    base = os.fsencode(path)
    transient = tuple(os.fsencode(suffix) for suffix in TRANSIENT_SUFFIXES)
    names: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != b".git")
        rel = os.path.relpath(dirpath, base)
        names.extend(os.path.normpath(os.path.join(rel, d)) + b"/" for d in dirnames)
        names.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if not f.endswith(transient))
    names.sort()
    return FileDigest(
        path=stored or path.resolve().as_posix(), kind="tree", bytes=len(names),
        sha256=hashlib.sha256(b"\0".join(names)).hexdigest(),
    )


def vouch_outputs(ws: Workspace, stage: str, outputs: list[FileDigest]) -> None:
    """What a distill command outside `distill run` (`distill export --include-review`, `--rebuild`)
    left as a stage's outputs: the next run that finds them so takes them as distill's own (its new
    reference), not as files modified by hand, which it must refuse to adopt."""
    write_sealed(ws.written_by_command_path(stage), dumps(sorted([d.path, d.sha256] for d in outputs)))


def vouched_outputs(ws: Workspace, stage: str) -> set[tuple[str, str]]:
    """(path, sha256) of what `vouch_outputs` recorded for `stage`; empty when none or damaged."""
    data = read_sealed(ws.written_by_command_path(stage))
    try:
        return {(str(path), str(sha)) for path, sha in loads(data)} if data is not None else set()
    except (ValueError, TypeError):
        return set()


def digest_path(ws: Workspace, path: Path, cache: DigestCache | None = None) -> FileDigest | None:
    if path.is_dir():
        return digest_dir(ws, path, cache)
    if path.is_file():
        return digest_file(ws, path, cache)
    return None


def digest_paths(ws: Workspace, paths: Iterable[Path], cache: DigestCache | None = None) -> list[FileDigest]:
    """Digests of the existing paths, deduplicated by stored path, sorted."""
    out: dict[str, FileDigest] = {}
    for p in paths:
        key = rel_path(ws, p)
        if key in out:
            continue
        d = digest_path(ws, p, cache)
        if d is not None:
            out[key] = d
    return [out[k] for k in sorted(out)]


# ---------------------------------------------------------------- environment


def git_info(code_dir: Path | None = None) -> GitInfo:
    """sha/branch/dirty of the checkout the distill package runs from; None when there is none."""
    here = (code_dir or Path(__file__).resolve().parent.parent).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != here:
        return GitInfo()  # not a checkout of this code (e.g. installed into another repo's venv)
    status = git("status", "--porcelain", "--untracked-files=no")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return GitInfo(
        sha=git("rev-parse", "HEAD"),
        branch=None if branch in (None, "HEAD") else branch,
        dirty=None if status is None else bool(status),
    )


def code_fingerprint(packages: Iterable[str]) -> str:
    """Hash of the .py files of the given top-level packages: editing the code reruns stages."""
    root = Path(__file__).resolve().parent.parent
    entries = []
    for pkg in sorted(set(packages)):
        base = root / pkg
        for file in sorted(base.rglob("*.py")):
            entries.append((file.relative_to(root).as_posix(), sha256_hex(file.read_bytes())))
    return sha256_hex(canonical_json(entries))


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_run_id(at: datetime | None = None) -> str:
    """Sortable by time (microseconds), unique by a random suffix."""
    t = at or now_utc()
    return f"{t:%Y%m%dT%H%M%S%fZ}-{os.urandom(3).hex()}"


# ---------------------------------------------------------------- validation


def error_code(line: str) -> str:
    return line.split(":", 1)[0].strip()


def validation_result(errors: list[str]) -> ValidationResult:
    return ValidationResult(passed=not errors, errors=errors, codes=sorted({error_code(e) for e in errors}))


def check_counts(report: StageReport) -> list[str]:
    """Conservation, in total and per source (docs/DESIGN.md, invariant 1)."""
    errors = []
    for name, c in [("total", report.totals), *report.by_source.items()]:
        if not c.balanced:
            errors.append(
                f"counts_unbalanced: {name}: in {c.rows_in} != written {c.written} + quarantined "
                f"{c.quarantined} + skipped {c.skipped} + deduped {c.deduped}"
            )
    if report.by_source:
        summed = {f: sum(getattr(c, f) for c in report.by_source.values()) for f in ("rows_in", "written", "quarantined", "skipped", "deduped")}
        mismatched = [f for f, v in summed.items() if getattr(report.totals, f) != v]
        if mismatched:
            errors.append(f"counts_unbalanced: totals differ from the sum over sources in {', '.join(mismatched)}")
    return errors


LINES_FOLD = "lines/1"  # counts no values: lines, blank and bad lines only
QUARANTINE_REASON_FOLD = "quarantine-reason/1"


def quarantine_reason(row: dict[str, Any]) -> str:
    """What the dataset card counts of a quarantine row (the fold QUARANTINE_REASON_FOLD)."""
    return str(row.get("reason"))


def check_jsonl_integrity(ws: Workspace, outputs: list[FileDigest], folds: FoldCache | None = None) -> list[str]:
    """Every JSONL output ends with a newline and every line is JSON (a torn or bad line fails).
    Lines counted by an earlier run are not re-read while the file still starts with them. A
    quarantine file is rewritten whole by each run, so it is checked with the fold that also
    counts its reasons: the dataset card then finds them counted instead of reading it again. An
    export's quarantine file that is, byte for byte, what the export wrote (its size, PREFIX_HASH
    and line count) is not read: the export's count of it (`WriterTally`) is the fold.
    `folds`: the run's fold cache (its caller saves it); None loads and saves the workspace's."""
    errors = []
    own = folds is None
    folds = FoldCache.load(ws.fold_cache_path) if folds is None else folds
    quarantine_dir = ws.quarantine_dir
    for d in outputs:
        if d.kind != "file" or not d.path.endswith(".jsonl"):
            continue
        path = ws.absolute(d.path)
        if path.parent == quarantine_dir:
            # what the export counted as it wrote the file: taken when the file is those bytes
            written = WriterTally.load(ws.quarantine_tally_path(path.stem))
            tally = folds.tally(path, QUARANTINE_REASON_FOLD, quarantine_reason, sha256=d.sha256, rewritten=True,
                                written=written if written is not None and written.lines == d.records else None)
        else:
            tally = folds.tally(path, LINES_FOLD, sha256=d.sha256)
        if tally.torn is not None:
            errors.append(f"output_torn: {d.path} ends with a torn line ({tally.torn} bytes)")
        if tally.bad:
            errors.append(f"output_unparseable: {d.path}: {tally.bad} line(s) are not JSON objects "
                          f"(first at line {tally.first_bad})")
    if own:
        folds.save()
    return errors


def count_categories(ws: Workspace, outputs: list[FileDigest], field: str | Callable[[dict[str, Any]], Any], *,
                     under: str, fold: str | None = None, folds: FoldCache | None = None) -> dict[str, int]:
    """Rows per category in the JSONL outputs under `under` (a ROOT-relative prefix). `fold` names
    what a callable `field` counts (the fold cache keys on it); a field name names itself.
    `folds`: the run's fold cache (its caller saves it); None loads and saves the workspace's."""
    get = field if callable(field) else (lambda row: row.get(field))
    name = fold or (field if isinstance(field, str) else None)
    if name is None:
        raise ValueError("count_categories: a callable field needs a fold name")

    def key(row: dict[str, Any]) -> str | None:
        value = get(row)
        return value if isinstance(value, str) and value else None

    counts: dict[str, int] = {}
    own = folds is None
    folds = FoldCache.load(ws.fold_cache_path) if folds is None else folds
    for d in outputs:
        if d.kind != "file" or not d.path.endswith(".jsonl") or not d.path.startswith(under):
            continue
        for value, n in folds.tally(ws.absolute(d.path), f"category:{name}/1", key, sha256=d.sha256).values.items():
            counts[value] = counts.get(value, 0) + n
    if own:
        folds.save()
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------- building receipts


@dataclass(frozen=True)
class ReceiptBasis:
    """What a receipt is measured against: the configuration and code it ran under."""

    config_hash: str
    full_config_hash: str
    code_version: str
    code_fingerprint: str


def build_receipt(
    *,
    run_id: str,
    stage: str,
    status: str,
    git: GitInfo,
    basis: ReceiptBasis,
    inputs: list[FileDigest],
    outputs: list[FileDigest],
    report: StageReport,
    output_categories: dict[str, int] | None = None,
    started_at: datetime,
    finished_at: datetime,
    duration_s: float,
    validation: ValidationResult,
    error: str | None,
    resume: ResumeDecision,
    reused: ReuseRef | None = None,
    determinism: list[DeterminismFinding] | None = None,
) -> StageReceipt:
    """Assemble a receipt, compute its content hash and validate it against its own schema."""
    data: dict[str, Any] = {
        "schema_version": 1,
        "run_id": run_id,
        "stage": stage,
        "status": status,
        "git": git.model_dump(mode="json"),
        "config_hash": basis.config_hash,
        "full_config_hash": basis.full_config_hash,
        "code_version": basis.code_version,
        "code_fingerprint": basis.code_fingerprint,
        "inputs": [d.model_dump(mode="json") for d in inputs],
        "outputs": [d.model_dump(mode="json") for d in outputs],
        "inputs_hash": aggregate_hash(inputs),
        "outputs_hash": aggregate_hash(outputs),
        "totals": report.totals.model_dump(mode="json"),
        "by_source": {k: v.model_dump(mode="json") for k, v in report.by_source.items()},
        "output_categories": dict(sorted((output_categories or {}).items())),
        "notes": list(report.notes),
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "duration_s": round(max(duration_s, 0.0), 6),
        "validation": validation.model_dump(mode="json"),
        "error": error,
        "resume": resume.model_dump(mode="json"),
        "reused": reused.model_dump(mode="json") if reused else None,
        "determinism": [f.model_dump(mode="json") for f in (determinism or [])],
    }
    # Normalise through JSON first so the hash is computed over exactly what is written.
    data = loads(dumps(data))
    data["content_hash"] = receipt_content_hash(data)
    try:
        return StageReceipt.model_validate(data)
    except ValidationError as exc:
        raise DistillError(f"receipt for {stage} failed its own schema: {exc}") from exc


# ---------------------------------------------------------------- storage


def run_dir(ws: Workspace, run_id: str) -> Path:
    return ws.reports_dir / run_id


def receipt_path(ws: Workspace, run_id: str, stage: str) -> Path:
    return run_dir(ws, run_id) / f"{stage}.json"


def write_model(path: Path, model: Any) -> None:
    """Re-validate a model from its own JSON, then write it atomically (defence in depth)."""
    text = model.model_dump_json(indent=2)
    try:
        type(model).model_validate_json(text)
    except ValidationError as exc:
        raise DistillError(f"{path.name} failed its own schema before write: {exc}") from exc
    write_atomic(path, (text + "\n").encode("utf-8"))


def write_latest(ws: Workspace, summary: RunSummary) -> Path:
    path = ws.reports_dir / LATEST_NAME
    pointer = {
        "run_id": summary.run_id,
        "summary": ws.relative(run_dir(ws, summary.run_id) / "summary.json"),
        "finished_at": summary.finished_at.isoformat(),
        "overall_passed": summary.overall_passed,
        "drift_severity": summary.drift_severity,
    }
    write_atomic(path, dumps(pointer) + b"\n")
    return path


def run_ids(ws: Workspace) -> list[str]:
    """Run directories, newest first (run ids sort by time)."""
    if not ws.reports_dir.is_dir():
        return []
    return sorted((p.name for p in ws.reports_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)


def load_summary(ws: Workspace, run_id: str) -> RunSummary | None:
    path = run_dir(ws, run_id) / "summary.json"
    try:
        return RunSummary.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def latest_run_id(ws: Workspace) -> str | None:
    """The latest pointer, else the newest run directory that has a readable summary."""
    pointer = ws.reports_dir / LATEST_NAME
    try:
        run_id = loads(pointer.read_bytes()).get("run_id")
        if isinstance(run_id, str) and load_summary(ws, run_id) is not None:
            return run_id
    except (OSError, ValueError, AttributeError):
        pass
    for rid in run_ids(ws):
        if load_summary(ws, rid) is not None:
            return rid
    return None


def load_receipt(path: Path) -> StageReceipt | None:
    """A receipt that passes its own schema (content hash included), else None."""
    try:
        return StageReceipt.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def last_successful_receipt(ws: Workspace, stage: str, *, exclude_run: str | None = None) -> tuple[StageReceipt, Path] | None:
    """Newest receipt of `stage` that passed validation and whose own hashes check out."""
    for rid in run_ids(ws):
        if rid == exclude_run:
            continue
        path = receipt_path(ws, rid, stage)
        if not path.exists():
            continue
        receipt = load_receipt(path)
        if receipt is not None and receipt.passed:
            return receipt, path
    return None
