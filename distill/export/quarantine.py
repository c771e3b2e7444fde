"""The row loop every exporter shares: decide, dedup, gate, validate, account, quarantine.

An exporter only says, per joined row, "drop it for this reason" or "here is the candidate
sample"; this module does the rest the same way for RAG and SFT (preference reuses the
pieces), so conservation and the quarantine shape cannot drift between exporters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any

from pydantic import BaseModel, ValidationError

from distill.checkpoint_file import Entries, JsonEntries
from distill.export.checkpoints import RowEntries
from distill.export.entry_summary import PartitionSummary
from distill.export.exported import ExportedIds
from distill.export.gates import Firewall, GateInput, refused_now
from distill.export.reader import Broken, Joined, ReaderItem
from distill.export.scored_index import key_digest
from distill.fold_cache import WriterTally
from distill.hashing import PrefixHash
from distill.records import QuarantineReason, QuarantineRecord, SourceRef
from distill.jsonl import HeldWrites, dumps
from distill.records.stage import StageReport, Tally


@dataclass(frozen=True, slots=True)
class Drop:
    reason: QuarantineReason
    errors: list[str]
    record_id: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row that passed the exporter's own checks; `build` makes the validated sample."""

    sample_id: str
    gate: GateInput
    build: Callable[[], BaseModel]


Decision = Drop | Candidate
GATE_BATCH = 5_000  # candidates per firewall check: bounds the scan batch
MAX_HELD = 4 * GATE_BATCH  # decided rows held for input order before they go to the sinks
UNSAFE = frozenset({QuarantineReason.UNSAFE_SFT_CATEGORY, QuarantineReason.UNSAFE_RAG_CATEGORY})


class QuarantineLines:
    """The sink an export's quarantine lines go through, each ended by a newline: where the next
    line starts (a checkpoint entry or a kept decision points there) and the (size, xxh3-128) of
    all written, which the next run checks the file by before it copies lines back out of it.
    Each line comes with its reason, so the file's count (`written`) spares its receipt a read.

    Lines are held until `held_bytes` of them, then joined, written and hashed at once: the
    preference export hands over a line per unpaired row (most of its rows), and a write and a
    hash update per line cost ~2 us each. `flush` (or `digest`) before the file is closed."""

    def __init__(self, out: IO[bytes], *, held_bytes: int = 1 << 20) -> None:
        self._hash = PrefixHash()
        self._writes = HeldWrites(out, held_bytes, on_block=self._hash.update)
        self._reasons: Counter[str] = Counter()  # lines per reason: every line has one
        self._counted = True  # False once a block's reasons did not add up to its lines

    def __call__(self, line: bytes, reason: str) -> None:
        self._writes.write(line + b"\n")
        self._reasons[reason] += 1

    def block(self, lines: bytes, count: int, reasons: Mapping[str, int]) -> None:
        """`count` whole lines joined by newlines, without the last one (a replayed partition's)."""
        self._writes.write(lines + b"\n")
        self.copied(count, reasons)

    def write_lines(self, data: bytes) -> None:
        """Lines copied as they are, newlines included (a block of an earlier quarantine file; it
        may end inside a line that the next call completes); `copied` counts them."""
        self._writes.write(data)

    def copied(self, count: int, reasons: Mapping[str, int]) -> None:
        """`count` lines handed over as bytes, with their reasons."""
        self._reasons.update(reasons)
        self._counted = self._counted and sum(reasons.values()) == count and all(n >= 0 for n in reasons.values())

    def written(self) -> WriterTally | None:
        """What was written, counted: None when a block's reasons did not add up to its lines."""
        size, digest = self.digest()
        if not self._counted:
            return None
        values = {r: n for r, n in sorted(self._reasons.items()) if n}
        return WriterTally(size, digest, sum(values.values()), values)

    def flush(self) -> None:
        self._writes.flush()

    @property
    def at(self) -> int:
        return self._hash.at + self._writes.held

    def digest(self) -> tuple[int, str]:
        self.flush()
        return self._hash.at, self._hash.hexdigest()


def joined_detail(j: Joined) -> dict[str, Any]:
    return {
        "category": j.scored.category.value,
        "evidence_run_id": j.evidence.run_id,
        "score_class": j.scored.score_class.value,
        "scored_file": j.scored_file,
        "scored_line": j.scored_line,
    }  # no free text (task ids, texts) from the row: it may be what carries a credential


def quarantine_joined(stage: str, j: Joined, reason: QuarantineReason | str, errors: list[str],
                      record_id: str | None = None) -> QuarantineRecord:
    return quarantine_scored(stage, j.source, j.ref(), joined_detail(j), reason, errors,
                             record_id or j.evidence.run_id)


def quarantine_scored(stage: str, source: str, ref: SourceRef, detail: dict[str, Any],
                      reason: QuarantineReason | str, errors: list[str], record_id: str) -> QuarantineRecord:
    """The quarantine row of a joined scored run, from the parts a spilled row keeps of it."""
    return QuarantineRecord(
        stage=stage,
        source=source,
        reason=QuarantineReason(reason),
        errors=[e for e in errors if e] or [str(reason)],
        record_id=record_id,
        source_ref=ref,
        excerpt=None,  # never copy the row's text: it may carry the credential that dropped it
        detail=detail,
    )


def scored_quarantine_line(stage: str, source: str, provenance: dict[str, Any], detail: dict[str, Any],
                           reason: QuarantineReason | str, errors: list[str], record_id: str) -> bytes:
    """`dumps(quarantine_scored(...).to_json_dict())` without building the models, for the
    preference export, which writes one per unpaired row on every run (~8 us a row through the
    models, ~1 us here): `provenance` is the JSON form of a validated Provenance and the rest
    are plain values, so there is nothing left to validate but what is checked here.
    tests/test_quarantine_line.py holds it to the models' bytes."""
    kept = [e for e in errors if e] or [str(reason)]
    if not stage or not all(isinstance(e, str) for e in kept) or not provenance["source_file"]:
        raise ValueError("a quarantine row needs a stage, string errors and a source file")
    return dumps({
        "schema_version": 1,
        "stage": stage,
        "source": source,
        "reason": QuarantineReason(reason).value,
        "errors": kept,
        "record_id": record_id,
        "source_ref": {"source_file": provenance["source_file"], "line_offset": provenance["line_offset"],
                       "line_number": provenance["line_number"], "sig_hash": provenance["sig_hash"]},
        "excerpt": None,
        "detail": detail,
    })


def quarantine_broken(stage: str, b: Broken) -> QuarantineRecord:
    return QuarantineRecord(
        stage=stage,
        source=b.source,
        reason=b.reason,
        errors=b.errors,
        record_id=b.record_id,
        source_ref=b.ref,
        excerpt=b.excerpt,
        detail=b.detail,
    )


def validation_errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or '<row>'}: {e['msg']}" for e in exc.errors()[:5]]


@dataclass
class RowExport:
    """What one exporter pass leaves behind besides the rows it streamed to its sinks."""

    stale: list[str] = field(default_factory=list)  # exported earlier, forbidden now


Entry = list[Any]
"""One input row's outcome as a checkpoint keeps it: [code, source, category, reason, sample id,
run id, length of its quarantine line or None] (the line itself is read from the quarantine file
the run that wrote the checkpoint left: checkpoints.RowEntries; what a partition's entries add up to
is kept beside them: entry_summary). Codes: "b" broken line, "d" dropped by the exporter's decision, "c" a
candidate that shipped (or was already shipped), "g" a candidate the firewall or the schema
refused, "x" a repeat of an id produced earlier in the input (its partition gets no checkpoint,
so an "x" entry is never replayed). A "d" row keeps its sample id and run id when its reason is an unsafe category (the
stale-row check asks for them again)."""


class RowExporter:
    """The row loop every exporter shares: every input row ends written, deduped or quarantined.

    Samples and quarantine lines go to the sinks in input order as soon as every earlier row is
    decided (after each firewall batch), so memory is bounded by the batch, not by the input.
    `on_quarantine` is handed whole lines without their last newline, with their reasons: one, or
    a replayed partition's as one block joined by newlines.
    `id_of` gives a row's sample id before any check, so a row refused now whose id is already
    in the (append-only) export is reported: e.g. a run re-scored as rejected after it shipped.

    With `record`, each row's outcome (an `Entry`) is kept as its JSON (`JsonEntries`: in memory,
    or a temporary file for a big partition) and added to the partition's summary until
    `end_partition` hands them over (a checkpoint); `replay` takes such entries instead of the rows
    they came from, producing the same lines and counters, when nothing they depended on has
    changed. Ids produced so far (`seen`) are kept as key digests, as the export's are.
    """

    def __init__(
        self,
        stage: str,
        decide: Callable[[Joined], Decision],
        existing_ids: ExportedIds,
        firewall: Firewall,
        report: StageReport,
        *,
        on_sample: Callable[[BaseModel], None],
        on_quarantine: QuarantineLines,
        id_of: Callable[[Joined], str] | None = None,
        record: bool = False,
    ) -> None:
        self.stage, self.decide, self.existing_ids, self.firewall, self.report = stage, decide, existing_ids, firewall, report
        self.on_sample, self.on_quarantine, self.id_of, self.record = on_sample, on_quarantine, id_of, record
        self.result = RowExport()
        self.seen: set[bytes] = set()  # key digests of the ids produced so far
        self._out: dict[int, tuple[str, Any]] = {}  # input index -> ("sample", model) | ("line", (line, reason)), until flushed
        # ..., the id's key digest, whether the export holds that id already
        self._pending: list[tuple[int, Joined, Candidate, bytes, bool]] = []
        self._next = 0
        self._entries = JsonEntries()
        self._summary = PartitionSummary()  # of the entries since the last end_partition
        self._repeat = False  # a row of this partition repeated an earlier id: no checkpoint for it
        # firewall outcomes are counted after the reader pass, in input order, so the report's
        # counters come out in the same order whatever the batch size
        self._gated = Tally()

    def _line(self, rec: QuarantineRecord) -> bytes:
        return dumps(rec.to_json_dict())

    def _record(self, i: int, entry: Entry, digest: bytes | None = None) -> None:
        self._entries.add(i, entry)
        self._summary.add(entry, digest)

    def _drop(self, i: int, source: str, rec: QuarantineRecord, category: str | None, entry: Entry) -> None:
        line = self._line(rec)
        self._out[i] = ("line", (line, rec.reason.value))
        self.report.source(source).bump("quarantined", reason=rec.reason.value, category=category)
        if self.record:
            entry[6] = len(line)
            self._record(i, entry)

    def _flush(self) -> None:
        """Every row read so far is decided: hand them to the sinks in input order."""
        for i in sorted(self._out):
            kind, value = self._out[i]
            if kind == "sample":
                self.on_sample(value)
            else:
                self.on_quarantine(*value)
        self._out.clear()

    def _gate(self) -> None:
        """Firewall the pending candidates; a row's verdict does not depend on its batch."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        verdicts = self.firewall.check([c.gate for _, _, c, _, shipped in batch if not shipped])
        if any(shipped for *_, shipped in batch):
            again = iter(self.firewall.check([c.gate for _, _, c, _, shipped in batch if shipped], paths=False))
            fresh = iter(verdicts)
            verdicts = [next(again) if shipped else next(fresh) for *_, shipped in batch]
        for (i, item, cand, digest, shipped), failure in zip(batch, verdicts, strict=True):
            category = item.scored.category.value
            rec: QuarantineRecord | None = None
            if failure is not None:
                rec = quarantine_joined(self.stage, item, failure.reason, failure.errors, cand.sample_id)
                if shipped:
                    self.result.stale.append(refused_now(cand.sample_id, self.stage, failure.reason, failure.errors))
            elif shipped:
                self._gated.bump(item.source, "deduped", category=category)
                if self.record:
                    self._record(i, ["c", item.source, category, None, cand.sample_id, None, None], digest)
                continue
            else:
                try:
                    self._out[i] = ("sample", cand.build())
                except ValidationError as exc:
                    rec = quarantine_joined(self.stage, item, QuarantineReason.SCHEMA_VIOLATION,
                                            validation_errors(exc), cand.sample_id)
            if rec is not None:
                line = self._line(rec)
                self._out[i] = ("line", (line, rec.reason.value))
                self._gated.bump(item.source, "quarantined", reason=rec.reason.value, category=category)
                if self.record:
                    self._record(i, ["g", item.source, category, rec.reason.value, cand.sample_id, None, len(line)],
                                 digest)
            else:
                self._gated.bump(item.source, "written", category=category)
                if self.record:
                    self._record(i, ["c", item.source, category, None, cand.sample_id, None, None], digest)

    def _stale(self, sid: str, run_id: str, category: str, reason: str) -> None:
        self.result.stale.append(
            f"{sid} is in the {self.stage} export but run {run_id} is now {category} ({reason}): "
            f"`distill export {self.stage} --rebuild` writes the export without it")

    def feed(self, item: ReaderItem) -> None:
        i = self._next
        self._next += 1
        if self._out and (not self._pending or len(self._out) >= MAX_HELD):
            self._gate()  # a row's verdict does not depend on its batch: gate early, hand everything on
            self._flush()
        if isinstance(item, Broken):
            self._drop(i, item.source, quarantine_broken(self.stage, item), None,
                       ["b", item.source, None, item.reason.value, None, None, None])
            return
        category = item.scored.category.value
        decision = self.decide(item)
        if isinstance(decision, Drop):
            rec = quarantine_joined(self.stage, item, decision.reason, decision.errors, decision.record_id)
            sid = self.id_of(item) if self.id_of is not None and decision.reason in UNSAFE else None
            self._drop(i, item.source, rec, category, ["d", item.source, category, decision.reason.value, sid,
                                                       item.evidence.run_id if sid is not None else None, None])
            if sid is not None and sid in self.existing_ids:
                self._stale(sid, item.evidence.run_id, category, decision.reason.value)
            return
        sid = decision.sample_id
        digest = key_digest(sid)
        # a repeat within this input first (so re-runs quarantine it the same way), then ids
        # already exported by an earlier run
        if digest in self.seen:
            self._repeat = True
            rec = quarantine_joined(self.stage, item, QuarantineReason.DUPLICATE_ID,
                                    [f"{sid} already produced by an earlier row of this input"], sid)
            self._drop(i, item.source, rec, category, ["x", item.source, category, None, sid, None, None])
            return
        self.seen.add(digest)
        # a row the export holds already is deduped while it still passes the gates: a benchmark
        # file added since, or a stricter setting, may refuse it now (then the run says so)
        self._pending.append((i, item, decision, digest, self.existing_ids.has(digest)))
        if len(self._pending) >= GATE_BATCH:
            self._gate()
            self._flush()

    def end_partition(self) -> Entries | None:
        """Decide and hand on every row read so far; the entries of the rows since the last call,
        with their summary (None when they cannot make a checkpoint: not recording, or a row
        repeated an id)."""
        self._gate()
        self._flush()
        entries = self._entries.take()
        summary, self._summary = self._summary, PartitionSummary()
        repeat, self._repeat = self._repeat, False
        if not self.record or repeat or entries is None:
            return None
        try:
            fields = summary.fields()
        except (UnicodeEncodeError, ValueError):
            # its strings are the entries' (a lone surrogate made those unwritable first): kept
            # as a guard, so that a summary JSON cannot carry is no checkpoint, never an error
            return None
        return replace(entries, fields=fields)

    def can_replay(self, entries: RowEntries) -> bool:
        """Whether these entries give what reading their rows would: no candidate's id was produced
        earlier in this input, every candidate that shipped is still in the export, and no refused
        one is in it now (its line would not be written: the lines are copied as one block)."""
        return entries.summary().replays_against(self.seen, self.existing_ids)

    def replay(self, entries: RowEntries, *, record: bool = True) -> None:
        """The rows these entries stand for, in input order, right after `can_replay` said yes (so
        every shipped candidate is still in the export: it counts as deduped without asking
        again, and every refused one is not); `record=False`: their entries are not handed over
        again (the partition's checkpoint is kept, or its entries' JSON copied, as it is; their
        summary is still added to the partition's). A replayed partition is most of what a run
        after an append does, so its rows are counted from its summary and its quarantine lines
        go to the sink as the one block they are in the last quarantine file."""
        self._gate()
        self._flush()
        summary = entries.summary()
        existing = self.existing_ids
        for sid, run_id, category, reason in summary.stale_in(existing):
            self._stale(sid, run_id, category, reason)
        shipped, refused = summary.ids()
        self.seen.update(shipped)
        self.seen.update(refused)
        self._gated.add(summary.gated)
        block = entries.lines()
        if block:
            self.on_quarantine.block(block, summary.lines, summary.quarantine_reasons())
        if self.record:
            if record:
                for at, data in enumerate(entries.json(), start=self._next):
                    self._entries.add_json(at, data)
            self._summary.merge(summary)
        self._next += len(entries)
        Tally.of(Counter(summary.counts)).into(self.report)

    def finish(self) -> RowExport:
        self._gate()
        self._flush()
        self._gated.into(self.report)
        self._entries.close()
        return self.result
