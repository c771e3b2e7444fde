"""The row loop every exporter shares: decide, dedup, gate, validate, account, quarantine.

An exporter only says, per joined row, "drop it for this reason" or "here is the candidate
sample"; this module does the rest the same way for RAG and SFT (preference reuses the
pieces), so conservation and the quarantine shape cannot drift between exporters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from distill.export.gates import Firewall, GateInput
from distill.export.reader import Broken, Joined, ReaderItem
from distill.records import QuarantineReason, QuarantineRecord, SourceRef
from distill.records.stage import StageReport


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


def export_rows(
    stage: str,
    items: Iterable[ReaderItem],
    decide: Callable[[Joined], Decision],
    existing_ids: set[str],
    firewall: Firewall,
    report: StageReport,
    *,
    on_sample: Callable[[BaseModel], None],
    on_quarantine: Callable[[QuarantineRecord], None],
    id_of: Callable[[Joined], str] | None = None,
) -> RowExport:
    """One pass over the reader: every input row ends written, deduped or quarantined.

    Samples and quarantine rows go to the sinks in input order as soon as every earlier row is
    decided (after each firewall batch), so memory is bounded by the batch, not by the input.
    `id_of` gives a row's sample id before any check, so a row refused now whose id is already
    in the (append-only) export is reported: e.g. a run re-scored as rejected after it shipped.
    """
    result = RowExport()
    out: dict[int, tuple[str, Any]] = {}  # input index -> ("sample"|"quarantine", value), until flushed
    pending: list[tuple[int, Joined, Candidate]] = []
    seen: set[str] = set()

    def drop(i: int, source: str, rec: QuarantineRecord, category: str | None) -> None:
        out[i] = ("quarantine", rec)
        report.source(source).bump("quarantined", reason=rec.reason.value, category=category)

    def flush() -> None:
        """Every row read so far is decided: hand them to the sinks in input order."""
        for i in sorted(out):
            kind, value = out[i]
            (on_sample if kind == "sample" else on_quarantine)(value)
        out.clear()

    # firewall outcomes are counted after the reader pass, in input order, so the report's
    # counters come out in the same order whatever the batch size
    gated: list[tuple[str, str, str | None, str]] = []  # (source, field, reason, category)

    def gate(batch: list[tuple[int, Joined, Candidate]]) -> None:
        """Firewall a batch of candidates; a row's verdict does not depend on its batch."""
        if not batch:
            return
        verdicts = firewall.check([c.gate for _, _, c in batch])
        for (i, item, cand), failure in zip(batch, verdicts, strict=True):
            category = item.scored.category.value
            rec: QuarantineRecord | None = None
            if failure is not None:
                rec = quarantine_joined(stage, item, failure.reason, failure.errors, cand.sample_id)
            else:
                try:
                    out[i] = ("sample", cand.build())
                except ValidationError as exc:
                    rec = quarantine_joined(stage, item, QuarantineReason.SCHEMA_VIOLATION,
                                            validation_errors(exc), cand.sample_id)
            if rec is not None:
                out[i] = ("quarantine", rec)
                gated.append((item.source, "quarantined", rec.reason.value, category))
            else:
                gated.append((item.source, "written", None, category))

    for i, item in enumerate(items):
        if out and (not pending or len(out) >= MAX_HELD):
            gate(pending)  # a row's verdict does not depend on its batch: gate early, hand everything on
            pending = []
            flush()
        if isinstance(item, Broken):
            drop(i, item.source, quarantine_broken(stage, item), None)
            continue
        category = item.scored.category.value
        decision = decide(item)
        if isinstance(decision, Drop):
            drop(i, item.source, quarantine_joined(stage, item, decision.reason, decision.errors, decision.record_id),
                 category)
            if id_of is not None and decision.reason in UNSAFE and id_of(item) in existing_ids:
                result.stale.append(f"{id_of(item)} is in the {stage} export but run {item.evidence.run_id} is now "
                                    f"{category} ({decision.reason.value}): `distill export {stage} --rebuild` writes the export without it")
            continue
        sid = decision.sample_id
        # a repeat within this input first (so re-runs quarantine it the same way), then ids
        # already exported by an earlier run
        if sid in seen:
            drop(i, item.source, quarantine_joined(stage, item, QuarantineReason.DUPLICATE_ID,
                                                   [f"{sid} already produced by an earlier row of this input"], sid),
                 category)
            continue
        seen.add(sid)
        if sid in existing_ids:
            report.source(item.source).bump("deduped", category=category)
            continue
        pending.append((i, item, decision))
        if len(pending) >= GATE_BATCH:
            gate(pending)
            pending = []
            flush()
    gate(pending)
    flush()
    for source, field_name, reason, category in gated:
        report.source(source).bump(field_name, reason=reason, category=category)
    return result
