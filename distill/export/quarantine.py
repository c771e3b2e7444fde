"""The row loop every exporter shares: decide, dedup, gate, validate, account, quarantine.

An exporter only says, per joined row, "drop it for this reason" or "here is the candidate
sample"; this module does the rest the same way for RAG and SFT (preference reuses the
pieces), so conservation and the quarantine shape cannot drift between exporters.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from distill.checkpoint_file import JsonEntries
from distill.export.exported import ExportedIds, Ids
from distill.export.gates import Firewall, GateInput
from distill.export.reader import Broken, Joined, ReaderItem
from distill.export.scored_index import key_digest
from distill.records import QuarantineReason, QuarantineRecord, SourceRef
from distill.jsonl import dumps
from distill.records.stage import StageReport, Tally, TallyKey


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
run id, quarantine line]. Codes: "b" broken line, "d" dropped by the exporter's decision, "c" a
candidate that shipped (or was already shipped), "g" a candidate the firewall or the schema
refused, "x" a repeat of an id produced earlier in the input (its partition gets no checkpoint,
so an "x" entry is never replayed). A "d" row keeps its sample id and run id when its reason is an unsafe category (the
stale-row check asks for them again)."""


BLOCK_BYTES = 16 << 20  # a partition whose quarantine lines and ids pass this keeps no block


class Block:
    """What replaying a partition's entries does when none of its ids is in the export unless it
    shipped there (the usual case), kept beside its checkpoint so an unchanged or grown partition
    is replayed without parsing its entries: the counters in first-seen order, the ids the
    candidates produced, the digests of the shipped ones (all must still be in the export) and of
    the refused ones that name an id (none may be), the quarantine lines in input order.

    Built by folding entries in input order (`add`, `extend`); `as_json` is the checkpoint's form."""

    def __init__(self) -> None:
        self.count = 0
        self.counts: Counter[TallyKey] = Counter()
        self.gated: Counter[TallyKey] = Counter()
        self.sids: list[str] = []
        self.shipped = bytearray()
        self.watch = bytearray()
        self.lines: list[str] = []
        self.size = 0

    def add(self, entry: Entry) -> None:
        code, source, category, reason, sid, _run_id, line = entry
        self.count += 1
        if code == "c":
            self.counts[(source, "deduped", None, category)] += 1
            self.sids.append(sid)
            self.shipped += key_digest(sid)
            self.size += len(sid)
            return
        if code == "g":
            self.gated[(source, "quarantined", reason, category)] += 1
            self.sids.append(sid)
            self.watch += key_digest(sid)
        elif code == "b" or code == "d":
            self.counts[(source, "quarantined", reason, category)] += 1
            if sid is not None:
                self.watch += key_digest(sid)
        else:
            raise ValueError(f"no block for an entry coded {code!r}")
        self.lines.append(line)
        self.size += len(line) + (len(sid) if sid is not None else 0)

    def extend(self, other: Block) -> None:
        """`other`'s entries after these."""
        self.count += other.count
        self.counts.update(other.counts)  # a key already here keeps its place: first seen stays first
        self.gated.update(other.gated)
        self.sids += other.sids
        self.shipped += other.shipped
        self.watch += other.watch
        self.lines += other.lines
        self.size += other.size

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "counts": [[*k, n] for k, n in self.counts.items()],
                "gated": [[*k, n] for k, n in self.gated.items()], "sids": self.sids,
                "shipped": base64.b64encode(bytes(self.shipped)).decode("ascii"),
                "watch": base64.b64encode(bytes(self.watch)).decode("ascii"), "lines": "\n".join(self.lines)}

    @classmethod
    def from_json(cls, value: Any) -> Block:
        """The block `as_json` wrote; ValueError/TypeError/KeyError on anything else."""
        block = cls()
        block.count = value["count"]
        if type(block.count) is not int or block.count < 0:
            raise ValueError("block count")
        for name in ("counts", "gated"):
            counter: Counter[TallyKey] = getattr(block, name)
            for source, outcome, reason, category, n in value[name]:
                if not (isinstance(source, str) and isinstance(outcome, str) and type(n) is int and n > 0
                        and (reason is None or isinstance(reason, str)) and (category is None or isinstance(category, str))):
                    raise TypeError("block counts")
                counter[(source, outcome, reason, category)] = n
        block.sids = value["sids"]
        if not (isinstance(block.sids, list) and all(isinstance(sid, str) for sid in block.sids)):
            raise TypeError("block ids")
        block.shipped = bytearray(base64.b64decode(value["shipped"], validate=True))
        block.watch = bytearray(base64.b64decode(value["watch"], validate=True))
        if len(block.shipped) % 16 or len(block.watch) % 16:
            raise ValueError("block digests")
        lines = value["lines"]
        if not isinstance(lines, str):
            raise TypeError("block lines")
        block.lines = [lines] if lines else []  # one piece: it is only ever handed on whole
        block.size = len(lines) + sum(map(len, block.sids))
        return block

    def text(self) -> str:
        return "\n".join(self.lines)


class RowExporter:
    """The row loop every exporter shares: every input row ends written, deduped or quarantined.

    Samples and quarantine lines go to the sinks in input order as soon as every earlier row is
    decided (after each firewall batch), so memory is bounded by the batch, not by the input.
    `on_quarantine` is handed whole lines without their last newline: one, or a replayed
    partition's as one block joined by newlines (the sink ends each call with a newline).
    `id_of` gives a row's sample id before any check, so a row refused now whose id is already
    in the (append-only) export is reported: e.g. a run re-scored as rejected after it shipped.

    With `record`, each row's outcome (an `Entry`) is kept as its JSON (`JsonEntries`: in memory,
    or a temporary file for a big partition) until `end_partition` hands the partition's entries
    over (a checkpoint); `replay` takes such entries instead of the rows they
    came from, producing the same lines and counters, when nothing they depended on has changed.
    Beside them it folds the partition's `Block` (`take_block`), which `replay_block` replays
    without the entries when `can_replay_block` finds the export as the block expects.
    """

    def __init__(
        self,
        stage: str,
        decide: Callable[[Joined], Decision],
        existing_ids: Ids,
        firewall: Firewall,
        report: StageReport,
        *,
        on_sample: Callable[[BaseModel], None],
        on_quarantine: Callable[[bytes], None],
        id_of: Callable[[Joined], str] | None = None,
        record: bool = False,
    ) -> None:
        self.stage, self.decide, self.existing_ids, self.firewall, self.report = stage, decide, existing_ids, firewall, report
        self.on_sample, self.on_quarantine, self.id_of, self.record = on_sample, on_quarantine, id_of, record
        self.result = RowExport()
        self.seen: set[str] = set()
        self._out: dict[int, tuple[str, Any]] = {}  # input index -> ("sample"|"line", value), until flushed
        self._pending: list[tuple[int, Joined, Candidate]] = []
        self._next = 0
        self._entries = JsonEntries()
        self._repeat = False  # a row of this partition repeated an earlier id: no checkpoint for it
        # this partition's Block, folded in input order: the entries of rows read wait in `_fed`
        # until every row before them is folded (gating decides rows out of order)
        self._block: Block | None = Block() if record else None
        self._fed: list[tuple[int, Entry]] = []
        self._finished: Block | None = None  # the last partition's, for `take_block`
        self._ready: Block | None = None  # the block can_replay_block accepted last
        # firewall outcomes are counted after the reader pass, in input order, so the report's
        # counters come out in the same order whatever the batch size
        self._gated = Tally()

    def _line(self, rec: QuarantineRecord) -> bytes:
        return dumps(rec.to_json_dict())

    def _keep(self, i: int, entry: Entry) -> None:
        """A read row's entry, for the checkpoint and the partition's block."""
        self._entries.add(i, entry)
        if self._block is not None:
            self._fed.append((i, entry))

    def _settle(self) -> None:
        """Decide every row read so far, hand them on, fold their entries into the block (so the
        entries waiting for it stay within a gate batch)."""
        self._gate()
        self._flush()
        self._fold_fed()

    def _fold_fed(self) -> None:
        """Fold the read rows' entries into the block, in input order (call when every row read
        so far is decided). A block grown past BLOCK_BYTES is given up for this partition."""
        fed, self._fed = self._fed, []
        if self._block is not None and fed:
            fed.sort(key=lambda item: item[0])
            self._fold([entry for _, entry in fed])

    def _fold(self, entries: list[Entry]) -> None:
        """Entries in input order into the block."""
        block = self._block
        if block is None:
            return
        try:
            for entry in entries:
                block.add(entry)
        except ValueError:
            self._block = None
            return
        if block.size > BLOCK_BYTES:
            self._block = None

    def _drop(self, i: int, source: str, rec: QuarantineRecord, category: str | None, entry: Entry) -> None:
        line = self._line(rec)
        self._out[i] = ("line", line)
        self.report.source(source).bump("quarantined", reason=rec.reason.value, category=category)
        if self.record:
            entry[6] = line.decode("utf-8")
            self._keep(i, entry)

    def _flush(self) -> None:
        """Every row read so far is decided: hand them to the sinks in input order."""
        for i in sorted(self._out):
            kind, value = self._out[i]
            (self.on_sample if kind == "sample" else self.on_quarantine)(value)
        self._out.clear()

    def _gate(self) -> None:
        """Firewall the pending candidates; a row's verdict does not depend on its batch."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        verdicts = self.firewall.check([c.gate for _, _, c in batch])
        for (i, item, cand), failure in zip(batch, verdicts, strict=True):
            category = item.scored.category.value
            rec: QuarantineRecord | None = None
            if failure is not None:
                rec = quarantine_joined(self.stage, item, failure.reason, failure.errors, cand.sample_id)
            else:
                try:
                    self._out[i] = ("sample", cand.build())
                except ValidationError as exc:
                    rec = quarantine_joined(self.stage, item, QuarantineReason.SCHEMA_VIOLATION,
                                            validation_errors(exc), cand.sample_id)
            if rec is not None:
                line = self._line(rec)
                self._out[i] = ("line", line)
                self._gated.bump(item.source, "quarantined", reason=rec.reason.value, category=category)
                if self.record:
                    self._keep(i, ["g", item.source, category, rec.reason.value, cand.sample_id, None,
                                   line.decode("utf-8")])
            else:
                self._gated.bump(item.source, "written", category=category)
                if self.record:
                    self._keep(i, ["c", item.source, category, None, cand.sample_id, None, None])

    def _stale(self, sid: str, run_id: str, category: str, reason: str) -> None:
        self.result.stale.append(
            f"{sid} is in the {self.stage} export but run {run_id} is now {category} ({reason}): "
            f"`distill export {self.stage} --rebuild` writes the export without it")

    def feed(self, item: ReaderItem) -> None:
        i = self._next
        self._next += 1
        if self._out and (not self._pending or len(self._out) >= MAX_HELD):
            self._settle()  # a row's verdict does not depend on its batch: gate early, hand everything on
        elif len(self._fed) >= GATE_BATCH and not self._pending and not self._out:
            self._fold_fed()  # rows decided at once (already shipped): nothing waits, fold them
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
        # a repeat within this input first (so re-runs quarantine it the same way), then ids
        # already exported by an earlier run
        if sid in self.seen:
            self._repeat = True
            rec = quarantine_joined(self.stage, item, QuarantineReason.DUPLICATE_ID,
                                    [f"{sid} already produced by an earlier row of this input"], sid)
            self._drop(i, item.source, rec, category, ["x", item.source, category, None, sid, None, None])
            return
        self.seen.add(sid)
        if sid in self.existing_ids:
            self.report.source(item.source).bump("deduped", category=category)
            if self.record:
                self._keep(i, ["c", item.source, category, None, sid, None, None])
            return
        self._pending.append((i, item, decision))
        if len(self._pending) >= GATE_BATCH:
            self._settle()

    def end_partition(self) -> Iterator[bytes] | None:
        """Decide and hand on every row read so far; the entries of the rows since the last call
        (None when they cannot make a checkpoint: not recording, or a row repeated an id)."""
        self._settle()
        entries = self._entries.take()
        repeat, self._repeat = self._repeat, False
        self._finished = self._block if not repeat else None
        self._block = Block() if self.record else None
        return entries if self.record and not repeat else None

    def take_block(self) -> dict[str, Any] | None:
        """The block of the partition `end_partition` just ended, as its checkpoint keeps it
        (None: it keeps none)."""
        block, self._finished = self._finished, None
        return None if block is None else block.as_json()

    def can_replay_block(self, value: Any) -> bool:
        """Whether replaying this block (as `take_block` gave it) gives what replaying its entries
        would: every shipped id still in the export, no refused row's id in it, no id produced
        earlier in this input or twice in the block."""
        self._ready = None
        existing = self.existing_ids
        if not isinstance(existing, ExportedIds):
            return False
        try:
            block = Block.from_json(value)
        except (ValueError, TypeError, KeyError):
            return False
        if (not self.seen.isdisjoint(block.sids) or len(set(block.sids)) != len(block.sids)
                or not existing.holds_all(bytes(block.shipped)) or existing.holds_any(bytes(block.watch))):
            return False
        self._ready = block
        return True

    def replay_block(self) -> None:
        """The rows of the block `can_replay_block` just accepted (their entries are not handed
        over again: the caller copies them)."""
        block, self._ready = self._ready, None
        assert block is not None
        self._settle()
        self.seen.update(block.sids)
        text = block.text()
        if text:
            self.on_quarantine(text.encode("utf-8"))
        for key, n in block.gated.items():
            self._gated.add(key, n)
        Tally.of(Counter(block.counts)).into(self.report)
        self._next += block.count
        if self._block is not None:
            self._block.extend(block)

    def can_replay(self, entries: list[Entry]) -> bool:
        """Whether these entries give what reading their rows would: no candidate's id was produced
        earlier in this input, and every candidate that shipped is still in the export."""
        ids: set[str] = set()
        seen, existing = self.seen, self.existing_ids
        for code, _source, _category, _reason, sid, _run_id, _line in entries:
            if code == "c" or code == "g":
                if sid in seen or sid in ids:
                    return False
                ids.add(sid)
                if code == "c" and sid not in existing:
                    return False
            elif code != "b" and code != "d":
                return False
        return True

    def replay(self, entries: list[Entry], *, record: bool = True) -> None:
        """The rows these entries stand for, in input order, right after `can_replay` said yes (so
        every shipped candidate is still in the export: it counts as deduped without asking
        again); `record=False`: their entries are not handed over again (the partition's
        checkpoint is kept as it is). A replayed partition is most of what a run after an append
        does, so its rows are counted in one Counter and its quarantine lines go to the sink as
        one block (the same bytes as one line at a time)."""
        self._settle()
        counts: Counter[TallyKey] = Counter()
        lines: list[str] = []
        existing = self.existing_ids
        for code, source, category, reason, sid, run_id, line in entries:
            if code == "c":
                counts[(source, "deduped", None, category)] += 1
            elif code == "g":
                if sid in existing:
                    counts[(source, "deduped", None, category)] += 1
                else:
                    lines.append(line)
                    self._gated.bump(source, "quarantined", reason=reason, category=category)
            else:
                lines.append(line)
                counts[(source, "quarantined", reason, category)] += 1
                if code == "d" and sid is not None and sid in existing:
                    self._stale(sid, run_id, category, reason)
        self.seen.update(entry[4] for entry in entries if entry[0] == "c" or entry[0] == "g")
        if lines:
            self.on_quarantine("\n".join(lines).encode("utf-8"))
        if self.record and record:
            for at, entry in enumerate(entries, start=self._next):
                self._entries.add(at, entry)
        self._next += len(entries)
        Tally.of(counts).into(self.report)
        self._fold(entries)

    def finish(self) -> RowExport:
        self._gate()
        self._flush()
        self._gated.into(self.report)
        self._entries.close()
        return self.result
