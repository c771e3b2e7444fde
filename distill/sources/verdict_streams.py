"""Class A (verdict-bearing) streams: scrum_reviews, observer_reviews, audits, contract_analyses.

Each row carries a verdict about the run itself (accepted flag + attempt, observer verdict,
finding severity, failure markers + observer verdict); the converter copies those fields into
`markers` verbatim and distill.score_rules turns them into a category. Shapes, natural keys and
task_id rules: docs/streams.md.
"""

from __future__ import annotations

from typing import Any

from distill.records import EvidenceRecord, ModelRole, QuarantineReason, ScoreClass
from distill.errors import RowRejected
from distill.sources.base import RowContext
from distill.sources.fields import (
    dict_or_none,
    drop_none,
    first_timestamp,
    get_path,
    key_or_int_str,
    natural_key,
    optional_int,
    optional_number,
    optional_str,
    require_bool,
    require_int,
    require_str,
    run_id,
    str_list,
    strict_str_list,
)


def convert_scrum_review(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """One review attempt of one file in a scrum cycle."""
    file = require_str(row, "file")
    attempt = require_int(row, "attempt")
    accepted = require_bool(row, "accepted")
    text = require_str(row, "review")
    created = first_timestamp(row, "ts", "created_at")
    corpora = str_list(row, "matrix_corpora")
    key = natural_key(row, ("review_id",), ("cycle", "file", "attempt"))
    return EvidenceRecord(
        run_id=run_id(ctx, key),
        task_id=f"scrum_review:{file}",
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.REVIEWER,
        model_name=optional_str(row, "model"),
        text=text,
        instruction=optional_str(row, "prompt")
        or f"Review {file}: for each defect give severity, confidence, a unified-diff patch, then how to verify it.",
        source_files=[file],
        retrieved_context={"matrix_corpora": corpora} if corpora else None,
        markers={"attempt": attempt, "accepted": accepted},
        metadata=drop_none(
            {
                "cycle": optional_str(row, "cycle"),
                "findings": optional_int(row, "findings"),
                "max_severity": optional_str(row, "max_severity"),
                "duration_ms": optional_number(row, "duration_ms"),
                "tokens": dict_or_none(row, "tokens"),
            }
        ),
        created_at=created,
        provenance=ctx.provenance(created),
    )


def convert_observer_review(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """An observer's accept/reject/cycle verdict on a reviewer's attempt."""
    file = require_str(row, "file")
    verdict = require_str(row, "verdict")
    text = require_str(row, "rationale")
    created = first_timestamp(row, "created_at", "ts")
    reviewed = optional_str(row, "reviewed")
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("id",), ("reviewed", "observer_model"))),
        task_id=f"observer_review:{file}",
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.OBSERVER,
        model_name=optional_str(row, "observer_model"),
        text=text,
        instruction=f"Judge the latest review of {file}: are its findings grounded and its patches applicable? "
        "Answer accept, reject or cycle, with a rationale.",
        source_files=[file],
        markers={"verdict": verdict},
        metadata=drop_none({"reviewed": reviewed}),
        parent_run_id=f"scrum_reviews:{reviewed}" if reviewed else None,
        created_at=created,
        provenance=ctx.provenance(created),
    )


def audit_instruction(where: str, files: list[str]) -> str:
    """The question one finding answers: the audit of these files in this change. Findings about
    other files of the same change answer another question (and are never paired with it)."""
    target = ", ".join(f"`{f}`" for f in files) if files else "the changed code"
    return (f"Check {target} in the changes of {where} for defects; give the finding with its severity, "
            "the evidence and a patch.")


def convert_audit(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """One auditor finding: {finding_id, phase, resolution, severity, topic, ts, evidence}."""
    phase = key_or_int_str(row, "phase")
    pr = key_or_int_str(row, "pr")
    if phase is None and pr is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, "missing 'phase' (and no 'pr' to fall back on)")
    severity = require_str(row, "severity")
    text = require_str(row, "evidence")
    created = first_timestamp(row, "ts", "created_at")
    task_id = f"audit:phase-{phase}" if phase is not None else f"audit:pr-{pr}"
    where = f"phase {phase}" if phase is not None else f"PR #{pr}"
    files = str_list(row, "files")
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("finding_id",))),
        task_id=task_id,
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.REVIEWER,
        model_name=optional_str(row, "auditor_model"),
        text=text,
        instruction=audit_instruction(where, files),
        source_files=files,
        markers=drop_none({"severity": severity, "resolution": optional_str(row, "resolution")}),
        metadata=drop_none(
            {"phase": phase, "pr": pr, "check": optional_str(row, "check"), "topic": optional_str(row, "topic")}
        ),
        created_at=created,
        provenance=ctx.provenance(created),
    )


def convert_contract_analysis(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """A permit/contractor risk analysis with failure markers and an observer verdict."""
    permit = require_str(row, "permit_id")
    text = require_str(row, "analysis")
    failure_markers = strict_str_list(row, "failure_markers")
    if get_path(row, "failure_markers") is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, "missing 'failure_markers' (use [] for none)")
    verdict = optional_str(row, "observer_verdict")
    created = first_timestamp(row, "created_at", "ts")
    contractor = optional_str(row, "contractor")
    instruction = (
        f"Assess contractor {contractor} on permit {permit}: list the risks found, cite the records, and recommend approve or hold."
        if contractor
        else f"Assess permit {permit}: list the risks found, cite the records, and recommend approve or hold."
    )
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("analysis_id",), ("permit_id", "attempt"))),
        task_id=f"contract:{permit}",
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.EXECUTOR,
        model_name=optional_str(row, "model"),
        text=text,
        instruction=instruction,
        markers={"failure_markers": failure_markers, "observer_verdict": verdict},
        metadata=drop_none(
            {
                "contractor": contractor,
                "attempt": optional_int(row, "attempt"),
                "risk_score": optional_number(row, "risk_score"),
            }
        ),
        created_at=created,
        provenance=ctx.provenance(created),
    )


CONVERTERS = {
    "scrum_reviews": convert_scrum_review,
    "observer_reviews": convert_observer_review,
    "audits": convert_audit,
    "contract_analyses": convert_contract_analysis,
}
