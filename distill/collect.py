"""`distill collect`: source streams -> evidence view (EvidenceRecord v1), partitioned by created_at.

Streams every source line by line; memory holds the dedup keys (16 bytes per evidence row) and
bounded write buffers, never a whole file. Each input unit becomes exactly one of: a new evidence
row, a duplicate of evidence already collected (deduped), or a quarantine row with a reason.
Evidence is append-only (whole lines under a lock); the collect quarantine file is rewritten
whole each run (temp + rename), so an unchanged input leaves every output byte-identical.

Append-only holds while the rules that make evidence stay the same. When they change (distill's
code, [collect], a [[sources]] mapping; `--force` too) the evidence is collected again: every
source is read into a scratch folder, and each partition file becomes the rows of its old lines
that no source line backs any more (a rotated log's: the only record of those runs) followed by
the rows the current rules make. A row collected under the old rules whose line is still there
(the same file and canonical hash, whatever the source is called or the run ids are now) is
replaced, or gone if the line is quarantined now: otherwise a fixed mapping or a tightened rule
never reached rows already collected, and a workspace answered differently from a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import pickle
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from distill.collect_checkpoints import (
    CollectCheckpoints,
    FileCheckpoint,
    FileRecorder,
    checkpoint_basis,
    resumable,
    split_keys,
)
from distill.config import Settings
from distill.fold_cache import FoldCache
from distill.hashing import file_size, line_digest
from distill.jsonl import (
    ReadProgress,
    append_lines,
    atomic_writer,
    dumps,
    iter_raw_lines,
    loads,
    lock_for,
    read_sealed,
    repair_torn_tail,
    torn_tail_length,
    write_sealed,
)
from distill.records import EvidenceRecord, QuarantineRecord
from distill.receipts import count_categories, saved_whole_file_digests
from distill.records.receipts import FileDigest
from distill.partition_pool import map_in_order
from distill.records.stage import Counts, StageReport
from distill.redact import new_scanner, redact_excerpts
from distill.sources.base import JsonlStream, Source, SourceItem, read_jsonl
from distill.stage import Stage, existing, files_under
from distill.stage_workers import processes_for
from distill.workspace import Workspace, iter_partition_files, partition_path

STAGE = "collect"
SCRATCH_PREFIX = ".distill-collect-"  # sources read side by side, before they apply (workspace.SCRATCH_DIR)
FLUSH_LINES = 20_000
EVIDENCE_NOTE = "evidence: "  # what a rebuild of the evidence says (the commands print these notes)
FLUSH_BYTES = 64 << 20


def evidence_key(run_id: str, sig: str) -> bytes:
    """Dedup identity of an evidence row: one (run_id, sig_hash) pair, as a 16-byte digest."""
    return hashlib.blake2b(f"{run_id}|{sig}".encode(), digest_size=16).digest()


def backing_key(source_file: str, sig: str) -> bytes:
    """A source line's identity, whatever rules convert it (whichever source, mapping or run id):
    the file it is in and its canonical hash."""
    return hashlib.blake2b(f"{source_file}|{sig}".encode(), digest_size=16).digest()


def _line_key(data: bytes) -> bytes | None:
    try:
        row = loads(data)
        return evidence_key(row["run_id"], row["provenance"]["sig_hash"])
    except (ValueError, KeyError, TypeError):
        return None  # not evidence we wrote; score's reader quarantines it


def _cut_torn_tail(path: Path) -> None:
    if torn_tail_length(path):  # the lock only where there is something to cut
        with lock_for(path):
            repair_torn_tail(path)


def load_evidence_lines(evidence_dir: Path) -> dict[bytes, bytes]:
    """Key -> digest of the line, for every evidence row (torn tails cut first): what a rebuild
    compares the rows it makes with."""
    lines: dict[bytes, bytes] = {}
    for path in iter_partition_files(evidence_dir):
        _cut_torn_tail(path)
        for raw in iter_raw_lines(path):
            if raw.terminated and raw.data and (key := _line_key(raw.data)) is not None:
                lines[key] = line_digest(raw.data)
    return lines


def load_evidence_keys(evidence_dir: Path, *, repair: bool, book: CollectCheckpoints | None = None) -> set[bytes]:
    """Keys of every evidence row already collected. Torn tails are cut first when `repair`.
    With checkpoints, only the lines appended since the last run are parsed."""
    keys: set[bytes] = set()
    for path in iter_partition_files(evidence_dir):
        if repair:
            _cut_torn_tail(path)
        if book is not None:
            keys.update(book.evidence_keys(path.relative_to(evidence_dir).as_posix(), path, _line_key))
            continue
        for raw in iter_raw_lines(path):
            if not raw.terminated or not raw.data:
                continue
            key = _line_key(raw.data)
            if key is not None:
                keys.add(key)
    return keys


class _PartitionWriter:
    """Buffers evidence lines per partition file and appends them in batches.

    A full buffer is appended on its own; everything is appended when the total buffered size
    passes FLUSH_BYTES. Each append is one locked write of whole lines (a crash leaves whole lines
    or a torn tail the next writer repairs). With checkpoints, the file's key checkpoint then
    covers the lines written, so the next run parses none of them.
    """

    def __init__(self, dry_run: bool, evidence_dir: Path, book: CollectCheckpoints | None) -> None:
        self.dry_run, self.evidence_dir, self.book = dry_run, evidence_dir, book
        self.buffers: dict[Path, tuple[list[bytes], list[bytes]]] = {}  # lines and their keys
        self.buffered_bytes = 0

    def add(self, path: Path, key: bytes, line: bytes) -> None:
        buffer = self.buffers.get(path)
        if buffer is None:
            buffer = self.buffers[path] = ([], [])
        buffer[0].append(line)
        buffer[1].append(key)
        self.buffered_bytes += len(line)
        if len(buffer[0]) >= FLUSH_LINES:
            self._append(path, buffer)
        elif self.buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def _append(self, path: Path, buffer: tuple[list[bytes], list[bytes]]) -> None:
        lines, keys = buffer
        if not self.dry_run:
            append_lines(path, lines, fsync=False)
            if self.book is not None:  # the file's key checkpoint covers what was just written
                self.book.appended(path.relative_to(self.evidence_dir).as_posix(), lines, keys)
        self.buffered_bytes -= sum(len(line) for line in lines)
        lines.clear()
        keys.clear()

    def flush(self) -> None:
        for path, buffer in self.buffers.items():
            if buffer[0]:
                self._append(path, buffer)
        self.buffered_bytes = 0


class _Partitions:
    """created_at day + source -> partition file, computed once per pair in a run."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.paths: dict[tuple[int, int, int, str], Path] = {}

    def path(self, record: EvidenceRecord) -> Path:
        at = record.created_at
        key = (at.year, at.month, at.day, record.source)
        found = self.paths.get(key)
        if found is None:
            found = self.paths[key] = partition_path(self.base, at, record.source)
        return found


def evidence_stale(ws: Workspace, basis: str) -> bool:
    """Evidence exists and was not collected under `basis` (or nothing says what it was)."""
    data = read_sealed(ws.evidence_basis_path)
    try:
        recorded = loads(data).get("basis") if data is not None else None
    except (ValueError, AttributeError):
        recorded = None
    return recorded != basis and bool(iter_partition_files(ws.evidence_dir))


@dataclass
class _Rebuild:
    """A collect that replaces the evidence: rows go to `staging`, counted as deduped when their key
    was in the evidence `before` (key -> line digest; `changed` counts those whose line is not the
    same now); `backing` gathers every source line read (backing_key), `written` the keys of the
    rows made."""

    before: dict[bytes, bytes]
    staging: Path
    backing: set[bytes] = dataclasses.field(default_factory=set)
    written: set[bytes] = dataclasses.field(default_factory=set)
    changed: int = 0

    def fate(self, data: bytes, turned_off: frozenset[str]) -> str:
        """What becomes of an old evidence line: "replaced" when its source line was read this time
        (under whatever source name and run id) or its row was made again (the line moved to another
        file: a rotated log), "dropped" when the settings turn its source off ([collect]
        include_replay_runs = false), else "kept": it is the only record of its run (a log rotated
        away, a removed mapping's or a deleted trajectory folder's rows; nothing says those lines are
        unwanted). A line that is not evidence distill wrote is kept too: score's reader accounts for it."""
        try:
            row = loads(data)
            source, sig = row["source"], row["provenance"]["sig_hash"]
            backed = backing_key(row["provenance"]["source_file"], sig) in self.backing
            made_again = evidence_key(row["run_id"], sig) in self.written
        except (ValueError, KeyError, TypeError, AttributeError):
            return "kept"
        if source in turned_off:
            return "dropped"
        return "replaced" if backed or made_again else "kept"

    def merge(self, evidence_dir: Path, turned_off: frozenset[str]) -> Counter[str]:
        """Each partition file becomes its kept old lines, in their order, then the rows the rebuild
        wrote for it; returns how many old lines met each fate. Each file is replaced whole (temp +
        rename): a crash leaves every file old or new, and the next run (whose basis is still not
        recorded) does the same again with the same result."""
        old = {p.relative_to(evidence_dir): p for p in iter_partition_files(evidence_dir)}
        new = {p.relative_to(self.staging): p for p in iter_partition_files(self.staging)}
        fates: Counter[str] = Counter()
        for rel in sorted(old.keys() | new.keys()):
            target = evidence_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            wrote = False
            with lock_for(target), atomic_writer(target, keep=lambda: wrote) as fh:
                if rel in old:
                    for raw in iter_raw_lines(old[rel]):
                        if not (raw.terminated and raw.data):
                            continue
                        fate = self.fate(raw.data, turned_off)
                        fates[fate] += 1
                        if fate == "kept":
                            fh.write(raw.data + b"\n")
                            wrote = True
                if rel in new:
                    with open(new[rel], "rb") as src:
                        shutil.copyfileobj(src, fh, 1 << 20)
                    wrote = True
            if not wrote:
                target.unlink(missing_ok=True)
        return fates


def turned_off(settings: Settings) -> frozenset[str]:
    """Sources whose rows the settings say not to collect (their evidence goes at a rebuild)."""
    from distill.sources.registry import REPLAY_RUNS

    return frozenset() if settings.collect.include_replay_runs else frozenset({REPLAY_RUNS})


def default_sources(ws: Workspace, settings: Settings) -> list[Source]:
    from distill.sources.registry import discover_sources

    return discover_sources(ws, settings)


def run_collect(
    ws: Workspace,
    settings: Settings,
    *,
    sources: Sequence[Source] | None = None,
    dry_run: bool = False,
    checkpoints: bool = True,
) -> StageReport:
    """Collect every source into ROOT/evidence; returns per-source counts (read = written +
    quarantined + deduped). `checkpoints`: read only what was appended to a JSONL source since
    the last run, where that is provably the same (distill.collect_checkpoints). Sources are read
    on every core when there is enough to read ([run] jobs, parallel_min_input_mib)."""
    chosen = list(sources) if sources is not None else default_sources(ws, settings)
    report = StageReport(stage=STAGE, dry_run=dry_run)
    if sources is None:
        from distill.records.stage import UnreadInput
        from distill.sources.registry import unread_inputs

        report.unread = [UnreadInput(path=p, reason=r) for p, r in unread_inputs(ws, settings, chosen)]
        report.notes.extend(f"not read: {u.path}: {u.reason}" for u in report.unread)
    basis = checkpoint_basis(settings)
    rebuild = not dry_run and evidence_stale(ws, basis)
    with contextlib.ExitStack() as stack:
        if rebuild:
            # every line is read again; the checkpoints describe the evidence about to be replaced
            ws.collect_checkpoint_path.unlink(missing_ok=True)
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, suffix=".tmp",
                                                                             dir=ws.root)))
            rebuilt = _Rebuild(before=load_evidence_lines(ws.evidence_dir), staging=staging)
            report.notes.append(f"{EVIDENCE_NOTE}collected again: distill, [collect] or [[sources]] changed since, or --force")
        else:
            rebuilt = None
        # a rebuild reads every line under the new basis: it starts an empty book and records
        # what it read, so the run after it reads only what is appended since (without one it
        # read every source again: after each upgrade of distill, two runs paid a full read)
        book = ((CollectCheckpoints(basis) if rebuild
                 else CollectCheckpoints.load(ws.collect_checkpoint_path, basis, known=saved_whole_file_digests(ws)))
                if checkpoints else None)
        _collect(ws, settings, chosen, report, dry_run=dry_run, book=book, rebuilt=rebuilt)
        if rebuilt is not None:
            fates = rebuilt.merge(ws.evidence_dir, turned_off(settings))
            if fates["kept"]:
                report.notes.append(f"{EVIDENCE_NOTE}{fates['kept']} rows kept as collected before: no source line read backs "
                                    "them now (delete evidence/*/*/*/SOURCE.jsonl to drop a source's rows)")
            if fates["dropped"]:
                report.notes.append(f"{EVIDENCE_NOTE}{fates['dropped']} rows dropped: [collect] turns their source off "
                                    "(rows already exported stay until `distill export all --rebuild`)")
            if rebuilt.changed:
                report.notes.append(f"{EVIDENCE_NOTE}{rebuilt.changed} rows differ from what was collected before: rows already "
                                    "exported keep what they shipped with until `distill export all --rebuild`")
    if not dry_run:
        write_sealed(ws.evidence_basis_path, dumps({"basis": basis}))
    report.outputs = [ws.relative(p) for p in iter_partition_files(ws.evidence_dir)]
    if not dry_run:
        report.outputs.append(ws.relative(ws.quarantine_path(STAGE)))
    return report.finalize()


def _collect(ws: Workspace, settings: Settings, chosen: list[Source], report: StageReport, *, dry_run: bool,
             book: CollectCheckpoints | None, rebuilt: _Rebuild | None) -> None:
    base = rebuilt.staging if rebuilt is not None else ws.evidence_dir
    seen = rebuilt.written if rebuilt is not None else load_evidence_keys(ws.evidence_dir, repair=not dry_run, book=book)
    writer = _PartitionWriter(dry_run, base, book)
    quarantine_path = ws.quarantine_path(STAGE)
    inputs: set[str] = set()
    partitions = _Partitions(base)
    # each file's next checkpoint, asked for once its quarantine rows are written
    recorded: list[Callable[[], list[tuple[str, FileCheckpoint | None]]]] = []

    def one_by_one(quarantine_out: _QuarantineSink) -> None:
        for source in chosen:
            inputs.update(ws.relative(p) for p in source.inputs(ws))
            read = _SourceReader(ws, settings, book, seen, partitions, rebuilt)
            report.by_source[source.name] = read.source(
                source, lambda key, path, line: writer.add(path, key, line), quarantine_out)
            recorded.append(read.checkpoints)
        writer.flush()

    def consume(quarantine_out: _QuarantineSink) -> None:
        weights = [sum(file_size(p) or 0 for p in source.inputs(ws)) for source in chosen]
        processes = processes_for(settings, sum(weights))
        if dry_run or processes < 2 or len(chosen) < 2:
            one_by_one(quarantine_out)
            return
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, suffix=".tmp", dir=ws.root) as scratch:
            side = _SideBySide(ws, settings, book, seen, partitions, chosen, Path(scratch), rebuilt)
            results = list(map_in_order(side.source, weights, processes, what=STAGE, scratch_in=Path(scratch)))
            if not _keys_disjoint(results):
                # two sources produce or look up the same evidence key: which one writes it depends
                # on the order they run in, so they run in order, in this process
                report.notes.append("sources share evidence keys: read one by one")
                one_by_one(quarantine_out)
                return
            for result in results:
                inputs.update(result.inputs)
                quarantine_out.write_block(result.quarantine)
                for path, key, line in _frames(result.evidence):
                    writer.add(Path(path), key, line)
                report.by_source[result.name] = result.counts
                recorded.append(partial(list, result.checkpoints))
                seen.update(split_keys(result.added))
                if rebuilt is not None:
                    rebuilt.backing.update(split_keys(result.backing))
                    rebuilt.changed += result.changed
            writer.flush()

    if dry_run:
        consume(_QuarantineSink(None))
    else:
        with atomic_writer(quarantine_path) as fh:
            sink = _QuarantineSink(fh, ws.secret_prefilter_path)
            consume(sink)
            sink.flush()
        if book is not None:
            for checkpoints_of in recorded:
                for rel, checkpoint in checkpoints_of():
                    book.record(rel, checkpoint)
            book.save(ws.collect_checkpoint_path)
    report.inputs = sorted(inputs)


EvidenceSink = Callable[[bytes, Path, bytes], None]
"""(key, partition file, line) of a new evidence row, in the order it was read."""


class _SourceReader:
    """Reads one source: every unit becomes new evidence (given to `put`), a duplicate of evidence
    in `seen`, or a quarantine row; JSONL files are resumed from their checkpoints."""

    def __init__(self, ws: Workspace, settings: Settings, book: CollectCheckpoints | None, seen: set[bytes],
                 partitions: _Partitions, rebuilt: _Rebuild | None = None) -> None:
        self.ws, self.settings, self.book, self.seen, self.partitions = ws, settings, book, seen, partitions
        self.rebuilt = rebuilt
        self.recorders: list[tuple[str, Path, FileRecorder]] = []

    def source(self, source: Source, put: EvidenceSink, quarantine_out: _QuarantineSink) -> Counts:
        ws, book, seen = self.ws, self.book, self.seen
        outcomes: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        roles: Counter[str] = Counter()

        rebuilt = self.rebuilt

        def take(item: SourceItem, recorder: FileRecorder | None) -> None:
            if isinstance(item, QuarantineRecord):
                if rebuilt is not None and item.source_ref is not None and item.source_ref.sig_hash:
                    rebuilt.backing.add(backing_key(item.source_ref.source_file, item.source_ref.sig_hash))
                outcomes["quarantined"] += 1
                reasons[item.reason.value] += 1
                if recorder is None:
                    quarantine_out.write(item)
                else:
                    quarantine_out.write(item, partial(recorder.written, recorder.quarantined(item.reason.value)))
                return
            key = evidence_key(item.run_id, item.provenance.sig_hash)
            if recorder is not None:
                recorder.evidence(key)
            if rebuilt is not None:
                rebuilt.backing.add(backing_key(item.provenance.source_file, item.provenance.sig_hash))
            if key in seen:
                outcomes["deduped"] += 1
                return
            seen.add(key)
            line = _evidence_line(item)
            if rebuilt is not None and (old := rebuilt.before.get(key)) is not None:
                outcomes["deduped"] += 1  # collected before: written again, as the current rules make it
                if old != line_digest(line):
                    rebuilt.changed += 1
            else:
                outcomes["written"] += 1
                roles[item.model_role.value] += 1
            put(key, self.partitions.path(item), line)

        if book is None or not resumable(source):
            for item in source.read(ws, self.settings):
                take(item, None)
        else:
            assert isinstance(source, JsonlStream)
            for path in source.inputs(ws):
                rel = ws.relative(path)
                recorder = book.resume(rel, path, source.name, seen)
                self.recorders.append((rel, path, recorder))
                if recorder.resumed is not None:
                    # the prefix, as a full read would find it: its bad lines quarantined the
                    # same way, every other line already collected
                    done = recorder.resumed
                    outcomes["quarantined"] += done.quarantined
                    outcomes["deduped"] += done.units - done.quarantined
                    reasons.update(done.reasons)
                    quarantine_out.write_lines(done.quarantine)
                progress = recorder.progress = ReadProgress()
                for item in read_jsonl(path, source=source.name, ws=ws, settings=self.settings, convert=source.convert,
                                       resume_at=recorder.resume_at(), progress=progress, on_chunk=recorder.hashed.update):
                    at = _line_offset(item)
                    take(item, recorder if at is not None and at < progress.end else None)
        return Counts(
            rows_in=sum(outcomes.values()),
            written=outcomes["written"],
            quarantined=outcomes["quarantined"],
            deduped=outcomes["deduped"],
            by_reason=dict(sorted(reasons.items())),
            by_category=dict(sorted(roles.items())),
        )

    def checkpoints(self) -> list[tuple[str, FileCheckpoint | None]]:
        """Each file's next checkpoint (after its quarantine rows were written)."""
        return [(rel, recorder.checkpoint(path)) for rel, path, recorder in self.recorders]

    def looked_up(self) -> list[bytes]:
        """Keys a file's checkpoint was refused for (not all in `seen`): another source adding one
        of them would have changed that refusal."""
        book = self.book
        out: list[bytes] = []
        for rel, _, recorder in self.recorders:
            found = book.files.get(rel) if book is not None else None
            if found is not None and recorder.resumed is None:
                with contextlib.suppress(ValueError):
                    out.extend(split_keys(found.key_bytes()))
        return out


@dataclass
class _SourceRead:
    """One source read in a forked child: what the stage applies, in source order, once every
    source is read and no two sources shared a key."""

    name: str
    inputs: list[str]
    counts: Counts
    quarantine: bytes  # its quarantine lines, redacted, as the file gets them
    evidence: Path  # its new evidence rows: pickled batches of (partition file, key, line)
    checkpoints: list[tuple[str, FileCheckpoint | None]]
    added: bytes  # the keys of its new evidence rows
    looked_up: bytes  # keys whose absence refused a checkpoint
    backing: bytes  # a rebuild's backing keys of the lines it read
    changed: int  # a rebuild's rows whose line differs from the evidence's


class _SideBySide:
    """Reads source i into scratch files instead of the workspace (called in a forked child, or
    here for the first group)."""

    def __init__(self, ws: Workspace, settings: Settings, book: CollectCheckpoints | None, seen: set[bytes],
                 partitions: _Partitions, sources: list[Source], scratch: Path, rebuilt: _Rebuild | None) -> None:
        # a copy: what the sources add must not reach the stage's set before they are found disjoint
        self.ws, self.settings, self.book, self.seen, self.partitions = ws, settings, book, set(seen), partitions
        self.sources, self.scratch, self.rebuilt = sources, scratch, rebuilt
        self.scanner: object | None = None  # one per process, as one sink would have

    def source(self, i: int) -> _SourceRead:
        source = self.sources[i]
        # a rebuild's backing keys of this source alone, returned with its result
        rebuilt = None if self.rebuilt is None else _Rebuild(before=self.rebuilt.before, staging=self.rebuilt.staging)
        reader = _SourceReader(self.ws, self.settings, self.book, self.seen, self.partitions, rebuilt)
        quarantine = io.BytesIO()
        sink = _QuarantineSink(quarantine, self.ws.secret_prefilter_path)  # a child: never a dry run
        sink.scanner = self.scanner
        added = bytearray()
        out = self.scratch / f"source-{i}.evidence"
        batch: list[tuple[str, bytes, bytes]] = []
        with open(out, "wb") as fh:

            def put(key: bytes, path: Path, line: bytes) -> None:
                added.extend(key)
                batch.append((str(path), key, line))
                if len(batch) >= FRAME_LINES:
                    pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
                    batch.clear()

            counts = reader.source(source, put, sink)
            if batch:
                pickle.dump(batch, fh, protocol=pickle.HIGHEST_PROTOCOL)
        sink.flush()
        self.scanner = sink.scanner
        return _SourceRead(
            name=source.name, inputs=[self.ws.relative(p) for p in source.inputs(self.ws)], counts=counts,
            quarantine=quarantine.getvalue(), evidence=out, checkpoints=reader.checkpoints(), added=bytes(added),
            looked_up=b"".join(reader.looked_up()),
            backing=b"".join(rebuilt.backing) if rebuilt is not None else b"", changed=rebuilt.changed if rebuilt else 0,
        )


FRAME_LINES = 5_000


def _frames(path: Path) -> Iterator[tuple[str, bytes, bytes]]:
    with open(path, "rb") as fh:
        while True:
            try:
                batch = pickle.load(fh)
            except EOFError:
                return
            yield from batch


def _keys_disjoint(results: list[_SourceRead]) -> bool:
    """No source added a key another source added or looked up (each read saw only the keys
    collected before the run and its own): then the order they ran in changed nothing."""
    added_before: set[bytes] = set()
    for result in results:
        mine = split_keys(result.added)
        if any(k in added_before for k in mine) or any(k in added_before for k in split_keys(result.looked_up)):
            return False
        added_before.update(mine)
    return True


def _line_offset(item: SourceItem) -> int | None:
    """Where the item's source line starts (None: not one line, e.g. an unreadable file)."""
    if isinstance(item, QuarantineRecord):
        return item.source_ref.line_offset if item.source_ref is not None else None
    return item.provenance.line_offset


def _evidence_line(record: EvidenceRecord) -> bytes:
    """Serialised by pydantic's core (field order is the model's, so it is stable)."""
    return record.model_dump_json().encode()


class _QuarantineSink:
    """Writes collect's quarantine rows, redacting any excerpt that carries a credential.

    Excerpts help a person see what was wrong with a line, but a bad line can hold a secret and
    the quarantine file sits under exports/: excerpts go through the same detect-secrets scan
    as the datasets, in batches so the scanner starts once per batch, not once per row.
    """

    BATCH = 500

    def __init__(self, fh: object | None, prefilter_cache: Path | None = None) -> None:
        self.fh = fh
        self.pending: list[QuarantineRecord] = []
        self.written_to: list[Callable[[bytes], None] | None] = []
        self.scanner: object | None = None
        self.prefilter_cache = prefilter_cache  # where the scanner keeps its compiled prefilter

    def write(self, record: QuarantineRecord, written: Callable[[bytes], None] | None = None) -> None:
        """Queue a row; `written` is told the line it became (a checkpoint keeps it)."""
        if self.fh is None:
            return
        self.pending.append(record)
        self.written_to.append(written)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def write_lines(self, lines: list[str]) -> None:
        """Rows written by an earlier run (already redacted), in order after what is queued."""
        if self.fh is None:
            return
        self.flush()
        for line in lines:
            self.fh.write(line.encode() + b"\n")  # type: ignore[attr-defined]

    def write_block(self, data: bytes) -> None:
        """Lines a forked reader wrote (already redacted), in order after what is queued."""
        if self.fh is None:
            return
        self.flush()
        self.fh.write(data)  # type: ignore[attr-defined]

    def flush(self) -> None:
        if self.fh is None or not self.pending:
            return
        if self.scanner is None:
            self.scanner = new_scanner(self.prefilter_cache)
        for record, written in zip(redact_excerpts(self.pending, self.scanner), self.written_to, strict=True):
            line = dumps(record.to_json_dict())
            self.fh.write(line + b"\n")  # type: ignore[attr-defined]
            if written is not None:
                written(line)
        self.pending.clear()
        self.written_to.clear()


def iter_evidence(ws: Workspace) -> Iterable[tuple[Path, EvidenceRecord]]:
    """Every evidence row (partition order). Rows that no longer validate are skipped here;
    score's reader is the place that accounts for them."""
    for path in iter_partition_files(ws.evidence_dir):
        for raw in iter_raw_lines(path):
            if raw.terminated and raw.data:
                try:
                    yield path, EvidenceRecord.model_validate_json(raw.data)
                except ValueError:
                    continue


class CollectStage(Stage):
    """Source streams under _kb/ -> evidence partitions (+ the collect quarantine)."""

    name = STAGE
    config_sections = ("collect", "sources")

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return files_under(ws.kb_dir)

    def input_trees(self, ws: Workspace, settings: Settings) -> list[Path]:
        # what _kb/ holds by name: an entry no source reads and no digest covers (a FIFO, a
        # device, a broken link, a name that is not UTF-8) still makes collect run and say so
        return [ws.kb_dir]

    def check_usable(self, ws: Workspace, settings: Settings) -> None:
        default_sources(ws, settings)

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.evidence_dir) + existing(ws.quarantine_path(STAGE))

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        return run_collect(ws, settings)

    def caches(self, ws: Workspace) -> list[Path]:
        # without the record of the rules the evidence was made by, --force collects it again
        return [ws.collect_checkpoint_path, ws.evidence_basis_path]

    def output_categories(self, ws: Workspace, outputs: list[FileDigest],
                          folds: FoldCache | None = None) -> dict[str, int]:
        return count_categories(ws, outputs, "model_role", under="evidence/", folds=folds)
