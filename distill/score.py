"""`distill score`: evidence -> ScoredRun v1 in the mirror partition under ROOT/scored-runs.

Scored runs are a derived view: a pure function of the evidence and the scorer version. Each
partition file is recomputed and replaced atomically only when its bytes change, so a second
run over unchanged evidence writes nothing and leaves every file byte-identical, while a new
verdict-bearing parent correctly re-scores the extraction rows it now passes a verdict to. A partition
whose old lines all stay as they were (collect only appended to its evidence) gets its new
lines appended in place, as its evidence partition did (`_appended`).

Two passes over the evidence: the first finds the class A/B rows that can be parents and indexes
them by task_id; the second scores every row, joining class C rows to their parent, and writes.
With checkpoints (distill.score_checkpoints) both passes read only the lines collect appended
since the last run, and only the extraction rows whose join a change of their task's parents
moves to another verdict are scored again; the outputs are the bytes a full pass writes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from distill import __version__
from distill.config import Settings
from distill.fold_cache import FoldCache
from distill.hashing import PrefixHash, line_digest, split_digests
from distill.jsonl import (
    READ_CHUNK,
    HeldWrites,
    LineSink,
    RawLine,
    ReadProgress,
    dumps,
    iter_raw_lines,
    line_at,
    loads,
    replace_if_changed,
    write_if_changed,
)
from distill.receipts import count_categories, saved_digest_cache, sha256_size_newlines
from distill.records.receipts import FileDigest
from distill.records import Category, EvidenceRecord, QuarantineReason, QuarantineRecord, ScoreClass, ScoredRun, SourceRef
from distill.records.stage import StageReport, Tally
from distill.redact import new_scanner, redact_excerpts
from distill.score_checkpoints import (
    CATEGORY_CODES,
    CODE_CATEGORIES,
    LINE_DIGEST,
    ExtractionEntry,
    JoinChoice,
    ParentEntry,
    PartitionCheckpoint,
    ScoreCheckpoints,
    parents_digest,
    score_basis,
)
from distill.score_rules import (
    SCORER_VERSION,
    JoinKey,
    ParentIndex,
    ParentRun,
    Verdict,
    score_evidence,
)
from distill.partition_pool import map_in_order
from distill.stage import Stage, existing
from distill.stage_workers import processes_for
from distill.workspace import Workspace, iter_partition_files

STAGE = "score"


def scorer_version(settings: Settings) -> str:
    """The rules' own version, unless the workspace pins another one ([score] scorer_version)."""
    return settings.score.scorer_version or SCORER_VERSION


def _read_rows(
    path: Path,
    ws: Workspace,
    problems: list[QuarantineRecord],
    *,
    resume_at: ReadProgress | None = None,
    progress: ReadProgress | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
    end: int | None = None,
) -> Iterator[tuple[int, EvidenceRecord]]:
    """(byte offset, record) of every valid evidence line of one partition file, from `resume_at`
    on (the lines starting before `end`, when given), one at a time: a partition can be most of
    the workspace. The other lines become quarantine rows. `progress` follows the whole lines read."""
    rel: str | None = None  # resolved once, for the first bad line (most reads have none)

    def ref(raw: RawLine) -> SourceRef:
        nonlocal rel
        rel = rel if rel is not None else ws.relative(path)
        return SourceRef(source_file=rel, line_offset=raw.offset, line_number=raw.number)

    start = resume_at or ReadProgress()
    if progress is not None:
        progress.end, progress.lines = start.end, start.lines
    for raw in iter_raw_lines(path, start=start.end, lines_before=start.lines, on_chunk=on_chunk):
        if end is not None and raw.offset >= end:
            return
        if progress is not None and raw.terminated:
            progress.end, progress.lines = raw.offset + raw.length + 1, raw.number
        if raw.data is not None and not raw.data.strip():
            continue
        if not raw.terminated:
            problems.append(_problem(QuarantineReason.TORN_LINE, "unterminated last line in evidence", ref(raw), raw.data))
            continue
        try:
            ev = EvidenceRecord.model_validate_json(raw.data or b"")
        except ValueError as exc:
            problems.append(_problem(QuarantineReason.SCHEMA_VIOLATION, f"not EvidenceRecord v1: {str(exc)[:200]}",
                                     ref(raw), raw.data))
            continue
        yield raw.offset, ev


@dataclass
class _MirrorNow:
    """The mirror partition as it is before this run: read once, held as digests of its lines
    (what `deduped` asks) and the sha256 of its bytes, never as its lines."""

    sha256: str | None = None  # None: no file
    size: int = 0
    lines: int = 0  # newline-terminated lines
    digests: set[bytes] = field(default_factory=set)
    hasher: Any = None  # (`known`) a sha256 object over the `size` bytes, to go on over appended lines
    tail: int = 0  # (`known`) bytes after them: what a run stopped while appending in place left

    @classmethod
    def known(cls, target: Path, digests: bytes, lines: int, scored_sha256: str) -> _MirrorNow | None:
        """The mirror as its checkpoint knows it (its lines' digests), when the file still starts
        with the bytes that run wrote (its first `lines` lines): hashed, not split into lines."""
        sha = hashlib.sha256()
        size = seen = 0
        try:
            with open(target, "rb") as fh:
                total = os.fstat(fh.fileno()).st_size
                while seen < lines and (chunk := fh.read(READ_CHUNK)):
                    found = chunk.count(b"\n")
                    if seen + found > lines:  # the last of the checkpoint's lines ends inside this chunk
                        end = -1
                        for _ in range(lines - seen):
                            end = chunk.index(b"\n", end + 1)
                        chunk, found = chunk[: end + 1], lines - seen
                    sha.update(chunk)
                    size += len(chunk)
                    seen += found
        except OSError:
            return None
        if seen != lines or sha.hexdigest() != scored_sha256:
            return None
        return cls(sha256=scored_sha256, size=size, lines=lines, digests=set(split_digests(digests, LINE_DIGEST)),
                   hasher=sha, tail=total - size)

    @classmethod
    def read(cls, target: Path) -> _MirrorNow:
        if not target.exists():
            return cls()
        sha = hashlib.sha256()
        found = cls(size=0)
        for raw in iter_raw_lines(target, on_chunk=sha.update):
            if raw.terminated:
                found.lines += 1
                found.digests.add(line_digest(raw.data or b""))
        found.sha256 = sha.hexdigest()
        found.size = target.stat().st_size
        return found


APPEND_HELD_BYTES = 1 << 20  # new mirror lines held before they are written


@contextlib.contextmanager
def _appended(target: Path, before: _MirrorNow, *, write: bool) -> Iterator[LineSink]:
    """The mirror's lines after those it holds (`before`, from `_MirrorNow.known`), appended to it
    in place: its old bytes are neither read again nor copied. Bytes after the checkpoint's lines
    (a run stopped while appending) are cut first; an error or an interrupt cuts the file back to
    its old lines, and a process killed while appending leaves lines after them that the next
    run cuts (the checkpoint still describes the old lines)."""
    if not write:
        yield LineSink(None, sha256=before.hasher.copy(), size=before.size)
        return
    with open(target, "r+b", buffering=0) as fh:
        os.ftruncate(fh.fileno(), before.size)
        fh.seek(before.size)
        held = HeldWrites(fh, APPEND_HELD_BYTES)
        try:
            yield LineSink(held, sha256=before.hasher.copy(), size=before.size)
            held.flush()
            os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), before.size)
            raise


def _problem(reason: QuarantineReason, error: str, ref: SourceRef, data: bytes | None) -> QuarantineRecord:
    excerpt = (data or b"")[:800].decode("utf-8", errors="replace")[:200] or None
    return QuarantineRecord(stage=STAGE, reason=reason, errors=[error], source_ref=ref, excerpt=excerpt)


def parent_of(ev: EvidenceRecord, settings: Settings) -> ParentRun | None:
    """A verdict-bearing (class A/B) run with a definite category: a parent extraction rows join."""
    if ev.score_class is ScoreClass.EXTRACTION:
        return None
    verdict = score_evidence(ev, settings.score)
    if verdict.category is Category.NEEDS_HUMAN_REVIEW:
        return None
    return ParentRun(run_id=ev.run_id, task_id=ev.task_id, category=verdict.category, created_at=ev.created_at)


def joined_verdict(row: EvidenceRecord | JoinKey, parents: TaskParents) -> Verdict | None:
    """The verdict a class C row inherits from its task's parents; None when it has none."""
    index = parents.get(row.task_id)
    return index.join(row) if index is not None else None


def join_choice(row: EvidenceRecord | JoinKey, parents: TaskParents) -> JoinChoice | None:
    """What a checkpoint remembers of a class C row's join: the parent it chose and how, which
    with the row's task make the whole inherited verdict (`score_rules.joined`). Equal choices,
    equal scored lines (the rest of the line is a function of the unchanged evidence row); a row
    re-joined after its task's parents changed is compared this way, without making its Verdict."""
    index = parents.get(row.task_id)
    choice = index.choose(row) if index is not None else None
    if choice is None:
        return None
    parent, how = choice
    return (parent.run_id, parent.category.value, how.name)


def _extraction_entry(index: int, offset: int, ev: EvidenceRecord, category: str,
                      parents: TaskParents) -> ExtractionEntry:
    return (index, offset, ev.task_id, category, ev.parent_run_id, ev.created_at.isoformat(), join_choice(ev, parents))


def score_one(ev: EvidenceRecord, parents: TaskParents, settings: Settings) -> ScoredRun:
    verdict: Verdict = score_evidence(ev, settings.score)
    joined: str | None = None
    if ev.score_class is ScoreClass.EXTRACTION:
        inherited = joined_verdict(ev, parents)
        if inherited is not None:
            verdict = inherited
            joined = inherited.parent_run_id
    return ScoredRun(
        evidence_run_id=ev.run_id,
        task_id=ev.task_id,
        source=ev.source,
        category=verdict.category,
        reasons=list(verdict.reasons),
        score_class=ev.score_class,
        scorer_version=scorer_version(settings),
        joined_parent_run_id=joined,
        created_at=ev.created_at,
        provenance=ev.provenance,
    )


def mirror_path(ws: Workspace, evidence_file: Path) -> Path:
    return ws.scored_dir / evidence_file.relative_to(ws.evidence_dir)


@dataclass
class _Partition:
    """One evidence partition on its way through the two passes."""

    path: Path
    rel: str
    resumed: bool = False  # its checkpoint held in pass 1 (read again in pass 2)
    hashed: PrefixHash = field(default_factory=PrefixHash)  # every byte read, from offset 0
    progress: ReadProgress = field(default_factory=ReadProgress)
    resumed_at: ReadProgress | None = None  # where its checkpointed prefix ends (the new rows start)
    new_problems: list[QuarantineRecord] = field(default_factory=list)
    # its parents in order, None for one a resumed checkpoint holds (made from its entry only if
    # a row of its task is scored: TaskParents)
    parents: list[ParentRun | None] = field(default_factory=list)
    # the same parents as its checkpoint keeps them: a resumed partition's are taken as they were
    # read, not made again from each ParentRun (that was ~15 % of a score run after an append)
    parent_entries: list[ParentEntry] = field(default_factory=list)
    todo: int = 0  # bytes pass 2 will read: what a pool of processes balances on

    def prefix_hash(self) -> str | None:
        """The hash of the whole lines read (an unterminated tail is left out)."""
        return self.hashed.hexdigest_to(self.path, self.progress.end)

    def set_parents(self, runs: list[ParentRun], entries: list[ParentEntry] | None = None) -> None:
        self.parents, self.parent_entries = list(runs), entries if entries is not None else [_entry(p) for p in runs]

    def resume_parents(self, entries: list[ParentEntry]) -> None:
        """A checkpoint's parents, as its entries (checked: `_check_entries`)."""
        _check_entries(entries)
        self.parents, self.parent_entries = [None] * len(entries), list(entries)

    def add_parent(self, parent: ParentRun) -> None:
        self.parents.append(parent)
        self.parent_entries.append(_entry(parent))


def _entry(parent: ParentRun) -> ParentEntry:
    return (parent.run_id, parent.task_id, parent.category.value, parent.created_at.isoformat())


def _from_entry(entry: ParentEntry) -> ParentRun:
    run_id, task_id, category, created_at = entry
    # positional, the category by lookup: ~220k entries are made at 1M rows after an append
    return ParentRun(run_id, task_id, _CATEGORY_OF[category], datetime.fromisoformat(created_at))


_CATEGORY_OF = {c.value: c for c in Category}


def _check_entries(entries: list[ParentEntry]) -> None:
    """Raise ValueError unless every entry would make a ParentRun (`_from_entry`), at a tenth of
    the cost of making them."""
    for _, _, category, created_at in entries:
        if category not in _CATEGORY_OF:
            raise ValueError(f"not a category: {category!r}")
        datetime.fromisoformat(created_at)


class TaskParents:
    """Each task's ParentIndex, made when a row of the task is first scored. After an append most
    tasks have no row to score, and their parents stay the entries their checkpoints hold (making a
    ParentRun for each and an index for every task was ~15 % of a score run after a 1 % append)."""

    def __init__(self, runs: dict[str, list[ParentRun | None]], entries: dict[str, list[ParentEntry]]) -> None:
        self._runs, self._entries = runs, entries
        self._made: dict[str, ParentIndex] = {}

    def get(self, task: str) -> ParentIndex | None:
        found = self._made.get(task)
        if found is None:
            entries = self._entries.get(task)
            if entries is None:
                return None
            found = self._made[task] = ParentIndex(
                [run if run is not None else _from_entry(entry) for run, entry in zip(self._runs[task], entries,
                                                                                       strict=True)])
        return found


@dataclass
class _Scored:
    """What scoring one partition gives the stage (made here or in a forked child)."""

    problems: list[str]  # its quarantine lines
    # scored lines per (already in the mirror file, category), in the order first seen: counted
    # in the partition's process, not one report bump per line in the stage's
    outcomes: Counter[tuple[bool, str]]
    checkpoint: dict[str, Any] | None
    extraction_tasks: list[str]
    unchanged: bool = False  # the checkpoint is the saved one, byte for byte: it is kept where it is


class _PartitionScorer:
    """Pass 2 for one partition: score its rows against the parents index, write its mirror
    file, and say what the stage counts and checkpoints. Called with the partition's index, in
    this process or in a forked child (which holds its own copy of everything here)."""

    def __init__(self, ws: Workspace, settings: Settings, parts: list[_Partition], parents: TaskParents,
                 book: ScoreCheckpoints | None, task_digest: Callable[[str], str], *, dry_run: bool) -> None:
        self.ws, self.settings, self.parts, self.parents = ws, settings, parts, parents
        self.book, self.task_digest, self.dry_run = book, task_digest, dry_run
        self.scanner: Any = None  # made on first need, once per process

    def __call__(self, i: int) -> _Scored:
        """Streams: the partition's rows are read, scored and written one at a time (its new rows
        read again from where pass 1 found them), so memory holds one row, whatever its size."""
        ws, settings, parents, book = self.ws, self.settings, self.parents, self.book
        part = self.parts[i]
        path = part.path
        target = mirror_path(ws, path)
        found = book.read(part.rel) if book is not None and part.resumed else None
        cp, saved = found if found is not None else (None, None)
        codes = cp.categories if cp is not None and cp.codes_valid() else None  # one per scored line
        known = cp.digests() if cp is not None and codes is not None else None
        # line index -> (evidence offset, task) of each extraction row whose join now gives another verdict
        again = self._joins_changed(cp) if cp is not None else {}
        if (cp is not None and codes is not None and known is not None and not again
                and self._untouched(part, cp, len(codes), target)):
            # pass 2 would write the mirror's own lines again, each one already there
            extraction = sorted(cp.extraction, key=lambda e: e[0])
            outcomes = Counter({(True, CODE_CATEGORIES[code]): n for code, n in Counter(codes).items()})
            return self._scored(part, codes, outcomes, extraction, cp.problems, cp.scored_sha256, known, saved=saved)
        kept = [CODE_CATEGORIES[code] for code in codes] if codes is not None else None
        # only newline-terminated lines count as present (a torn tail is not a scored row)
        before = None
        if cp is not None and kept is not None and known is not None and part.resumed_at is not None:
            before = _MirrorNow.known(target, known, len(kept), cp.scored_sha256)
        if before is None:
            before = _MirrorNow.read(target)
        categories: list[str] = []
        deduped: list[bool] = []
        line_digests = bytearray()  # of the lines written, in order: the next checkpoint's
        extraction: list[ExtractionEntry] = []
        old_problems: list[str] = []
        fresh: list[QuarantineRecord] = []

        reread_parents = False  # the evidence prefix held but the mirror file did not: parents come from the read
        # what the file holds now (a tail after the checkpoint's lines: replaced whatever is written)
        current = (before.sha256, before.size) if before.sha256 is not None and not before.tail else None
        resumed = (cp is not None and kept is not None and part.resumed_at is not None and before.sha256 is not None
                   and len(kept) == before.lines and before.sha256 == cp.scored_sha256)
        if resumed:
            assert cp is not None
            # the prefix's scored lines as written, but for the extraction rows whose join changed
            extraction.extend(entry for entry in cp.extraction if entry[0] not in again)
        # (a mirror this process may not write to is replaced whole, as it always was)
        in_place = (resumed and not again and known is not None and before.hasher is not None
                    and (self.dry_run or os.access(target, os.W_OK)))
        with (_appended(target, before, write=not self.dry_run) if in_place
              else replace_if_changed(target, current=current, write=not self.dry_run)) as out:

            def emit(line: bytes, category: str) -> None:
                out.write_line(line)
                categories.append(category)
                digest = line_digest(line)
                deduped.append(digest in before.digests)
                line_digests.extend(digest)

            if resumed:
                assert cp is not None and kept is not None
                if in_place:
                    # every line stays as the checkpoint wrote it, where it is
                    assert known is not None
                    categories.extend(kept)
                    deduped.extend([True] * len(kept))
                    line_digests.extend(known)
                else:
                    with open(path, "rb") as evidence:  # one open for the partition's re-scored rows
                        # the checkpoint's lines (not a tail after them)
                        lines = itertools.islice((r for r in iter_raw_lines(target) if r.terminated), len(kept))
                        for index, raw in enumerate(lines):
                            line, category = raw.data or b"", kept[index]
                            if index in again:
                                offset, _ = again[index]
                                ev = EvidenceRecord.model_validate_json(line_at(evidence, offset))
                                run = score_one(ev, parents, settings)
                                line, category = dumps(run.to_json_dict()), run.category.value
                                extraction.append(_extraction_entry(index, offset, ev, category, self.parents))
                            emit(line, category)
                extraction.sort(key=lambda e: e[0])
                old_problems, fresh = cp.problems, part.new_problems
                rows = _read_rows(path, ws, [], resume_at=part.resumed_at, end=part.progress.end)
            else:
                part.hashed, part.progress = PrefixHash(), ReadProgress()
                rows = _read_rows(path, ws, fresh, progress=part.progress, on_chunk=part.hashed.update)
                if part.resumed:
                    reread_parents = True
                    part.set_parents([])
            part.new_problems = []
            for offset, ev in rows:
                if reread_parents and (found := parent_of(ev, settings)) is not None:
                    part.add_parent(found)
                run = score_one(ev, parents, settings)
                emit(dumps(run.to_json_dict()), run.category.value)
                if ev.score_class is ScoreClass.EXTRACTION:
                    extraction.append(_extraction_entry(len(categories) - 1, offset, ev, run.category.value,
                                                          self.parents))
        # the partition's quarantine rows: the prefix's as written, the new ones redacted now
        if any(r.excerpt for r in fresh) and self.scanner is None:
            self.scanner = new_scanner(None if self.dry_run else self.ws.secret_prefilter_path)
        mine = old_problems + [dumps(r.to_json_dict()).decode() for r in redact_excerpts(fresh, self.scanner)]
        return self._scored(part, "".join([CATEGORY_CODES[c] for c in categories]), Counter(zip(deduped, categories)),
                            extraction, mine, out.sha256.hexdigest(), bytes(line_digests))

    def _joins_changed(self, cp: PartitionCheckpoint) -> dict[int, tuple[int, str]]:
        """The checkpoint's extraction rows whose join gives another verdict now, by line index:
        only a row of a task whose parent list changed is joined again (from its entry, without
        reading its evidence line), and only one whose join chooses another parent, or finds it
        another way, is scored again (`join_choice`: its verdict differs exactly then)."""
        book = self.book
        if book is None:
            return {}
        changed: dict[int, tuple[int, str]] = {}
        for index, offset, task, _, named, created_at, chosen in cp.extraction:
            if self.task_digest(task) == book.task_parents.get(task):
                continue
            try:
                key = JoinKey(task, named, datetime.fromisoformat(created_at))
            except ValueError:  # not what this code writes: score the row again from its evidence
                changed[index] = (offset, task)
                continue
            if join_choice(key, self.parents) != chosen:
                changed[index] = (offset, task)
        return changed

    def _untouched(self, part: _Partition, cp: PartitionCheckpoint, lines: int, target: Path) -> bool:
        """Whether pass 2 would only copy the partition's mirror onto itself: no line was added to
        the evidence since its checkpoint, no extraction row's join changed (the caller asks
        `_joins_changed` first), and the mirror is byte for byte what the checkpoint wrote. Costs
        one hash of the mirror, not a parse."""
        if part.resumed_at is None or part.new_problems or part.progress.end != part.resumed_at.end:
            return False
        if self.book is None:
            return False
        known = self.book.known_sha256(target) if self.book.known_sha256 is not None else None
        if known is None:  # not as the last run's receipts saw it: read it
            try:
                _, sha, lines = sha256_size_newlines(target)
            except OSError:
                return False
            known = (sha, lines)
        return known == (cp.scored_sha256, lines)

    def _scored(self, part: _Partition, codes: str, outcomes: Counter[tuple[bool, str]],
                extraction: list[ExtractionEntry], problems: list[str], scored_sha256: str, line_digests: bytes, *,
                saved: bytes | None = None) -> _Scored:
        """`codes`: the scored lines' categories (CATEGORY_CODES); `saved`: the partition's
        checkpoint as the file holds it, when pass 2 left it untouched."""
        checkpoint = None
        if self.book is not None and (sha := part.prefix_hash()) is not None:
            checkpoint = {
                "end": part.progress.end, "lines": part.progress.lines, "prefix_hash": sha,
                "scored_sha256": scored_sha256,
                "categories": codes,
                "line_digests": base64.b64encode(line_digests).decode("ascii"),
                "problems": [line for line in problems if _problem_offset(line) < part.progress.end],
                "parents": part.parent_entries, "extraction": extraction,
            }
        part.set_parents([])
        return _Scored(problems=problems, outcomes=outcomes,
                       checkpoint=checkpoint, extraction_tasks=[e[2] for e in extraction],
                       unchanged=saved is not None and checkpoint is not None and _same_json(checkpoint, saved))


def _same_json(checkpoint: dict[str, Any], saved: bytes) -> bool:
    try:
        return dumps(checkpoint) == saved
    except (UnicodeEncodeError, ValueError):
        return False


def run_score(ws: Workspace, settings: Settings, *, dry_run: bool = False, checkpoints: bool = True) -> StageReport:
    """Score every evidence row; returns counts with the category distribution per source.
    `checkpoints`: score only rows appended since the last run, and re-score the extraction rows
    whose task's parents changed, where that is provably the same (distill.score_checkpoints)."""
    report = StageReport(stage=STAGE, dry_run=dry_run)
    saved = saved_digest_cache(ws) if checkpoints and not dry_run else None
    book = (ScoreCheckpoints(ws.score_checkpoint_path, score_basis(settings, scorer_version(settings)),
                             known=saved.xxh3_of, known_sha256=saved.sha256_lines_of)
            if saved is not None else None)
    evidence_files = iter_partition_files(ws.evidence_dir)

    # pass 1: the verdict-bearing parents, by task (a checkpointed prefix gives its own at once,
    # and only its new lines are read; the other partitions are read on every core when there
    # is enough to read)
    parts: list[_Partition] = []
    for path in evidence_files:
        part = _Partition(path, path.relative_to(ws.evidence_dir).as_posix())
        parts.append(part)
        found = book.resume(part.rel, path) if book is not None else None
        if found is not None:
            cp, part.hashed = found
            part.resumed = True
            try:
                part.resume_parents(cp.parents)
            except ValueError:  # not what this code writes: score the partition from the start
                part.resumed, part.hashed = False, PrefixHash()
                part.set_parents([])
        if part.resumed:
            part.resumed_at = ReadProgress(cp.end, cp.lines)
            new_rows = _read_rows(path, ws, part.new_problems, progress=part.progress, on_chunk=part.hashed.update,
                                  resume_at=part.resumed_at)
            for _, ev in new_rows:
                if (found := parent_of(ev, settings)) is not None:
                    part.add_parent(found)
            part.todo = part.progress.end - cp.end + 1
        else:
            part.todo = path.stat().st_size + 1
    unread = [part for part in parts if not part.resumed]

    def parents_in(i: int) -> list[ParentRun]:
        # read again in pass 2: memory holds one row at a time, not a partition
        return [p for _, ev in _read_rows(unread[i].path, ws, []) if (p := parent_of(ev, settings)) is not None]

    weights = [part.todo for part in unread]
    scratch_in = None if dry_run else ws.root  # a dry run holds no lock and writes nothing in the workspace
    read_parents = map_in_order(parents_in, weights, processes_for(settings, sum(weights)), what=STAGE,
                                scratch_in=scratch_in)
    for part, found_parents in zip(unread, read_parents, strict=True):
        part.set_parents(found_parents)
    by_task: dict[str, list[ParentRun | None]] = defaultdict(list)
    entries_by_task: dict[str, list[ParentEntry]] = defaultdict(list)
    for part in parts:
        for parent, entry in zip(part.parents, part.parent_entries, strict=True):
            task = entry[1]
            by_task[task].append(parent)
            entries_by_task[task].append(entry)
        if book is None:
            part.set_parents([])
    parents = TaskParents(by_task, entries_by_task)
    digests: dict[str, str] = {}

    def task_digest(task: str) -> str:
        if task not in digests:
            digests[task] = parents_digest(entries_by_task.get(task, []))
        return digests[task]

    try:
        # pass 2: score and write each mirror partition (and its next checkpoint), partitions on
        # every core when there is enough to do; results are taken in partition order
        problem_lines: list[str] = []
        joined: set[str] = set()
        scorer = _PartitionScorer(ws, settings, parts, parents, book, task_digest, dry_run=dry_run)
        weights = [part.todo for part in parts]
        scored = map_in_order(scorer, weights, processes_for(settings, sum(weights)), what=STAGE,
                              scratch_in=scratch_in)
        tally = Tally()
        for part, done in zip(parts, scored, strict=True):
            source = part.path.stem
            report.source(source)  # listed even when it has no rows
            problem_lines.extend(done.problems)
            for line in done.problems:
                tally.bump(source, "quarantined", reason=str(loads(line)["reason"]))
            tally.add(Counter({(source, "deduped" if seen else "written", None, category): n
                               for (seen, category), n in done.outcomes.items()}))
            tally.into(report)
            if book is not None and done.checkpoint is not None:
                joined.update(done.extraction_tasks)
                if not (done.unchanged and book.keep(part.rel)):
                    book.write(part.rel, done.checkpoint)
        if not dry_run:
            _remove_orphans(ws, {part.rel for part in parts})
            quarantine_path = ws.quarantine_path(STAGE)
            payload = b"".join(line.encode() + b"\n" for line in problem_lines)
            write_if_changed(quarantine_path, payload)
            report.outputs.append(ws.relative(quarantine_path))
            if book is not None:
                book.save({task: task_digest(task) for task in joined})
    finally:
        if book is not None:  # an interrupted run leaves no half-written checkpoint file behind
            book.discard()
    report.inputs = [ws.relative(p) for p in evidence_files]
    report.outputs = [ws.relative(p) for p in iter_partition_files(ws.scored_dir)] + report.outputs
    report.notes.append(f"scorer_version={scorer_version(settings)}")
    return report.finalize()


def _problem_offset(line: str) -> int:
    ref = loads(line).get("source_ref") or {}
    offset = ref.get("line_offset")
    return offset if isinstance(offset, int) else 1 << 62


def _remove_orphans(ws: Workspace, keep: set[str]) -> None:
    """Scored files whose evidence partition is gone would be stale data: remove them. `keep`: the
    evidence partitions by their names under the evidence folder (`_Partition.rel`), compared as
    strings (hashing a Path per partition cost ~3 % of a score run after an append)."""
    base = os.fspath(ws.scored_dir) + os.sep
    for path in iter_partition_files(ws.scored_dir):
        name = os.fspath(path)
        if not (name.startswith(base) and name[len(base):].replace(os.sep, "/") in keep):
            path.unlink()


class ScoreStage(Stage):
    """Evidence -> scored runs (mirror partitions) + the score quarantine."""

    name = STAGE
    after = ("collect",)
    config_sections = ("score",)

    def version(self, settings: Settings) -> str:
        return f"distill {__version__}; scorer {scorer_version(settings)}"

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.evidence_dir)

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.scored_dir) + existing(ws.quarantine_path(STAGE))

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        return run_score(ws, settings)

    def caches(self, ws: Workspace) -> list[Path]:
        return [ws.score_checkpoint_path]

    def output_categories(self, ws: Workspace, outputs: list[FileDigest],
                          folds: FoldCache | None = None) -> dict[str, int]:
        return count_categories(ws, outputs, "category", under="scored-runs/", folds=folds)
