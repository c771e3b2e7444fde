"""Class C (extraction) streams: distilled_facts, distilled_procedures, distilled_config_hints,
observer_escalations, audit_facts.

These rows were extracted from other runs and carry no verdict of their own. Their task_id is
the task of the run they came from, so the scorer can join them to a verdict-bearing parent;
when the row names that run, parent_run_id points at it (`<stream>:<key>`).
"""

from __future__ import annotations

from typing import Any

from distill.records import EvidenceRecord, ModelRole, QuarantineReason, ScoreClass
from distill.errors import RowRejected
from distill.sources.base import RowContext
from distill.sources.fields import (
    drop_none,
    first_timestamp,
    get_path,
    key_or_int_str,
    natural_key,
    optional_number,
    optional_str,
    require_str,
    run_id,
    strict_str_list,
)

EXTRACTION_TIMESTAMPS = ("extracted_at", "created_at", "ts")


def _origin(row: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """task_id and parent run id from the row's `origin {stream, task, run?}`."""
    origin = get_path(row, "origin")
    if origin is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, "missing 'origin' (the run this row was extracted from)")
    if not isinstance(origin, dict):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'origin' is {type(origin).__name__}, expected an object")
    task = require_str(row, "origin.task")
    stream = optional_str(row, "origin.stream")
    run = optional_str(row, "origin.run")
    parent = f"{stream}:{run}" if stream and run else None
    return task, parent, drop_none({"origin_stream": stream, "origin_run": run})


def _extraction(
    row: dict[str, Any],
    ctx: RowContext,
    *,
    key: str | None,
    task_id: str,
    text: str,
    parent: str | None,
    metadata: dict[str, Any],
    source_files: list[str] | None = None,
) -> EvidenceRecord:
    created = first_timestamp(row, *EXTRACTION_TIMESTAMPS)
    return EvidenceRecord(
        run_id=run_id(ctx, key),
        task_id=task_id,
        source=ctx.source,
        score_class=ScoreClass.EXTRACTION,
        model_role=ModelRole.EXTRACTOR,
        model_name=optional_str(row, "extractor_model"),
        text=text,
        instruction=None,
        source_files=source_files or [],
        markers={},
        metadata=metadata,
        parent_run_id=parent,
        created_at=created,
        provenance=ctx.provenance(created),
    )


def convert_distilled_fact(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    text = require_str(row, "fact")
    task, parent, origin = _origin(row)
    tags = strict_str_list(row, "tags")
    meta = drop_none({**origin, "tags": tags or None, "confidence": optional_number(row, "confidence")})
    return _extraction(
        row, ctx, key=natural_key(row, ("fact_id",)), task_id=task, text=text, parent=parent, metadata=meta
    )


def convert_distilled_procedure(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    title = require_str(row, "title")
    steps = strict_str_list(row, "steps")
    if not steps:
        raise RowRejected(QuarantineReason.EMPTY_TEXT, "'steps' is empty")
    text = title + "\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    task, parent, origin = _origin(row)
    return _extraction(
        row, ctx, key=natural_key(row, ("procedure_id",)), task_id=task, text=text, parent=parent, metadata=origin
    )


def convert_distilled_config_hint(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    setting = require_str(row, "setting")
    suggested = get_path(row, "suggested")
    if suggested is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, "missing 'suggested'")
    if not isinstance(suggested, str | int | float | bool):
        raise RowRejected(QuarantineReason.WRONG_TYPE, "'suggested' must be a scalar")
    current = get_path(row, "current")
    rationale = optional_str(row, "rationale") or ""
    change = f"from {current} to {suggested}" if current is not None else f"to {suggested}"
    text = f"Set `{setting}` {change}." + (f"\n\n{rationale}" if rationale.strip() else "")
    task, parent, origin = _origin(row)
    meta = drop_none({**origin, "setting": setting, "current": current, "suggested": suggested})
    return _extraction(
        row, ctx, key=natural_key(row, ("hint_id",)), task_id=task, text=text, parent=parent, metadata=meta
    )


def convert_observer_escalation(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    file = require_str(row, "file")
    reason = require_str(row, "reason")
    summary = optional_str(row, "summary")
    review = optional_str(row, "observer_review")
    text = reason + (f"\n\n{summary}" if summary and summary.strip() else "")
    meta = drop_none({"escalated_to": optional_str(row, "escalated_to"), "observer_review": review})
    return _extraction(
        row,
        ctx,
        key=natural_key(row, ("escalation_id",)),
        task_id=f"observer_review:{file}",
        text=text,
        parent=f"observer_reviews:{review}" if review else None,
        metadata=meta,
        source_files=[file],
    )


def convert_audit_fact(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    phase = key_or_int_str(row, "phase")
    if phase is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, "missing 'phase'")
    text = require_str(row, "fact")
    finding = optional_str(row, "finding")
    return _extraction(
        row,
        ctx,
        key=natural_key(row, ("fact_id",)),
        task_id=f"audit:phase-{phase}",
        text=text,
        parent=f"audits:{finding}" if finding else None,
        metadata=drop_none({"phase": phase, "finding": finding}),
    )


CONVERTERS = {
    "distilled_facts": convert_distilled_fact,
    "distilled_procedures": convert_distilled_procedure,
    "distilled_config_hints": convert_distilled_config_hint,
    "observer_escalations": convert_observer_escalation,
    "audit_facts": convert_audit_fact,
}
