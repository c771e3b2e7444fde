"""`distill collect`: source streams -> evidence view (EvidenceRecord v1), partitioned by created_at.

Streams every source line by line; memory holds the dedup keys (16 bytes per evidence row) and
bounded write buffers, never a whole file. Each input unit becomes exactly one of: a new evidence
row, a duplicate of evidence already collected (deduped), or a quarantine row with a reason.
Evidence is append-only (whole lines under a lock); the collect quarantine file is rewritten
whole each run (temp + rename), so an unchanged input leaves every output byte-identical.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from distill.config import Settings
from distill.jsonl import append_lines, atomic_writer, dumps, iter_raw_lines, loads, lock_for, repair_torn_tail
from distill.records import EvidenceRecord, QuarantineRecord
from distill.receipts import count_categories
from distill.records.receipts import FileDigest
from distill.records.stage import Counts, StageReport
from distill.redact import new_scanner, redact_excerpts
from distill.sources.base import Source
from distill.stage import Stage, existing, files_under
from distill.workspace import Workspace, iter_partition_files, partition_path

STAGE = "collect"
FLUSH_LINES = 20_000
FLUSH_BYTES = 64 << 20


def evidence_key(run_id: str, sig: str) -> bytes:
    """Dedup identity of an evidence row: one (run_id, sig_hash) pair, as a 16-byte digest."""
    return hashlib.blake2b(f"{run_id}|{sig}".encode(), digest_size=16).digest()


def load_evidence_keys(evidence_dir: Path, *, repair: bool) -> set[bytes]:
    """Keys of every evidence row already collected. Torn tails are cut first when `repair`."""
    keys: set[bytes] = set()
    for path in iter_partition_files(evidence_dir):
        if repair:
            with lock_for(path):
                repair_torn_tail(path)
        for raw in iter_raw_lines(path):
            if not raw.terminated or not raw.data:
                continue
            try:
                row = loads(raw.data)
                keys.add(evidence_key(row["run_id"], row["provenance"]["sig_hash"]))
            except (ValueError, KeyError, TypeError):
                continue  # not evidence we wrote; score's reader quarantines it
    return keys


class _PartitionWriter:
    """Buffers evidence lines per partition file and appends them in batches.

    A full buffer is appended on its own; everything is appended when the total buffered size
    passes FLUSH_BYTES. Each append is one locked, fsynced write of whole lines, so batching
    bounds the number of fsyncs without loosening crash safety.
    """

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.buffers: dict[Path, list[bytes]] = {}
        self.buffered_bytes = 0

    def add(self, path: Path, line: bytes) -> None:
        buffer = self.buffers.get(path)
        if buffer is None:
            buffer = self.buffers[path] = []
        buffer.append(line)
        self.buffered_bytes += len(line)
        if len(buffer) >= FLUSH_LINES:
            self._append(path, buffer)
        elif self.buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def _append(self, path: Path, buffer: list[bytes]) -> None:
        if not self.dry_run:
            append_lines(path, buffer, fsync=False)
        self.buffered_bytes -= sum(len(line) for line in buffer)
        buffer.clear()

    def flush(self) -> None:
        for path, buffer in self.buffers.items():
            if buffer:
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


def default_sources(ws: Workspace, settings: Settings) -> list[Source]:
    from distill.sources.registry import discover_sources

    return discover_sources(ws, settings)


def run_collect(
    ws: Workspace,
    settings: Settings,
    *,
    sources: Sequence[Source] | None = None,
    dry_run: bool = False,
) -> StageReport:
    """Collect every source into ROOT/evidence; returns per-source counts (read = written +
    quarantined + deduped)."""
    chosen = list(sources) if sources is not None else default_sources(ws, settings)
    report = StageReport(stage=STAGE, dry_run=dry_run)
    if sources is None:
        from distill.records.stage import UnreadInput
        from distill.sources.registry import unread_inputs

        report.unread = [UnreadInput(path=p, reason=r) for p, r in unread_inputs(ws, settings, chosen)]
        report.notes.extend(f"not read: {u.path}: {u.reason}" for u in report.unread)
    seen = load_evidence_keys(ws.evidence_dir, repair=not dry_run)
    writer = _PartitionWriter(dry_run)
    quarantine_path = ws.quarantine_path(STAGE)
    inputs: set[str] = set()

    partitions = _Partitions(ws.evidence_dir)

    def consume(quarantine_out: _QuarantineSink) -> None:
        for source in chosen:
            inputs.update(ws.relative(p) for p in source.inputs(ws))
            outcomes: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            roles: Counter[str] = Counter()
            for item in source.read(ws, settings):
                if isinstance(item, QuarantineRecord):
                    outcomes["quarantined"] += 1
                    reasons[item.reason.value] += 1
                    quarantine_out.write(item)
                    continue
                key = evidence_key(item.run_id, item.provenance.sig_hash)
                if key in seen:
                    outcomes["deduped"] += 1
                    continue
                seen.add(key)
                outcomes["written"] += 1
                roles[item.model_role.value] += 1
                writer.add(partitions.path(item), _evidence_line(item))
            report.by_source[source.name] = Counts(
                rows_in=sum(outcomes.values()),
                written=outcomes["written"],
                quarantined=outcomes["quarantined"],
                deduped=outcomes["deduped"],
                by_reason=dict(sorted(reasons.items())),
                by_category=dict(sorted(roles.items())),
            )
        writer.flush()

    if dry_run:
        consume(_QuarantineSink(None))
    else:
        with atomic_writer(quarantine_path) as fh:
            sink = _QuarantineSink(fh)
            consume(sink)
            sink.flush()
    report.inputs = sorted(inputs)
    report.outputs = [ws.relative(p) for p in iter_partition_files(ws.evidence_dir)]
    if not dry_run:
        report.outputs.append(ws.relative(quarantine_path))
    return report.finalize()


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

    def __init__(self, fh: object | None) -> None:
        self.fh = fh
        self.pending: list[QuarantineRecord] = []
        self.scanner: object | None = None

    def write(self, record: QuarantineRecord) -> None:
        if self.fh is None:
            return
        self.pending.append(record)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self.fh is None or not self.pending:
            return
        if self.scanner is None:
            self.scanner = new_scanner()
        for record in redact_excerpts(self.pending, self.scanner):
            self.fh.write(dumps(record.to_json_dict()) + b"\n")  # type: ignore[attr-defined]
        self.pending.clear()


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

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.evidence_dir) + existing(ws.quarantine_path(STAGE))

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        return run_collect(ws, settings)

    def output_categories(self, ws: Workspace, outputs: list[FileDigest]) -> dict[str, int]:
        return count_categories(ws, outputs, "model_role", under="evidence/")
