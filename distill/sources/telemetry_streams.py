"""Class B (telemetry) streams: auto_apply, outcomes, mode_experiments, replay_runs.

No one judged these runs directly; the verdict is derived from what happened next (the patch
was committed or reverted, scenario events succeeded, grounding and latency, the replay gate).
The converters copy those signals into `markers`; distill.score_rules derives the category.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from distill.records import EvidenceRecord, ModelRole, QuarantineReason, ReplayRun, ScoreClass
from distill.errors import RowRejected
from distill.sources.base import RowContext
from distill.sources.fields import (
    dict_or_none,
    drop_none,
    first_timestamp,
    get_path,
    natural_key,
    optional_bool,
    optional_number,
    optional_str,
    require_number,
    require_str,
    run_id,
)


def convert_auto_apply(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """An automatic patch application and what became of it (committed / *_reverted / ...)."""
    file = require_str(row, "file")
    patch = require_str(row, "patch")
    status = require_str(row, "status")
    created = first_timestamp(row, "ts_ms", "ts", "created_at")
    review = optional_str(row, "source_review")
    tests = dict_or_none(row, "tests") or {}
    failed = tests.get("failed")
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("apply_id",))),
        task_id=f"auto_apply:{file}",
        source=ctx.source,
        score_class=ScoreClass.TELEMETRY,
        model_role=ModelRole.APPLIER,
        model_name=optional_str(row, "model"),
        text=patch,
        instruction=(
            f"Apply the findings of scrum review '{review}' to '{file}' as a minimal unified-diff patch."
            if review
            else f"Apply the latest review findings to '{file}' as a minimal unified-diff patch."
        ),
        source_files=[file],
        markers=drop_none(
            {
                "status": status,
                "build_ok": optional_bool(row, "build_ok"),
                "tests_failed": failed if isinstance(failed, int) and not isinstance(failed, bool) else None,
            }
        ),
        metadata=drop_none({"commit": optional_str(row, "commit"), "source_review": review}),
        parent_run_id=f"scrum_reviews:{review}" if review else None,
        created_at=created,
        provenance=ctx.provenance(created),
    )


def _events(row: dict[str, Any]) -> list[dict[str, Any]]:
    value = get_path(row, "events")
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'events' is {type(value).__name__}, expected a list")
    out = []
    for i, event in enumerate(value):
        if not isinstance(event, dict):
            raise RowRejected(QuarantineReason.WRONG_TYPE, f"'events.{i}' is not an object")
        ok = event.get("ok")
        if not isinstance(ok, bool):
            raise RowRejected(QuarantineReason.WRONG_TYPE, f"'events.{i}.ok' must be a bool")
        name = event.get("event")
        out.append({"event": name if isinstance(name, str) else f"event-{i + 1}", "ok": ok})
    return out


def convert_outcome(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """One scenario run: per-event success flags, gap signals and the cited answer."""
    scenario_id = require_str(row, "scenario_id")
    text = require_str(row, "answer")
    created = first_timestamp(row, "created_at", "ts")
    events = _events(row)
    all_ok = optional_bool(row, "all_events_ok")
    gaps = get_path(row, "gap_signals")
    if gaps is not None and (isinstance(gaps, bool) or not isinstance(gaps, int)):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'gap_signals' is {type(gaps).__name__}, expected int")
    scenario = optional_str(row, "scenario")
    cites = sorted(
        {
            c
            for e in (get_path(row, "events") or [])
            for c in (e.get("citations") if isinstance(e.get("citations"), list) else [])
            if isinstance(c, str)
        }
    )
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("outcome_id",), ("scenario_id", "run"))),
        task_id=f"scenario:{scenario_id}",
        source=ctx.source,
        score_class=ScoreClass.TELEMETRY,
        model_role=ModelRole.EXECUTOR,
        model_name=optional_str(row, "model"),
        text=text,
        instruction=f"Handle the scenario '{scenario or scenario_id}' step by step; say whether each step succeeded "
        "and cite the policy behind it.",
        retrieved_context={"citations": cites} if cites else None,
        markers=drop_none({"all_events_ok": all_ok, "gap_signals": gaps, "events": events or None}),
        metadata=drop_none({"scenario": scenario, "run": get_path(row, "run")}),
        created_at=created,
        provenance=ctx.provenance(created),
    )


def convert_mode_experiment(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """One task run under one retrieval mode; empty output is kept (it is a scoring signal)."""
    task_class = require_str(row, "task_class")
    file = require_str(row, "file")
    output = require_str(row, "output", allow_empty=True)
    latency_ms = require_number(row, "latency_ms")
    created = first_timestamp(row, "ts", "created_at")
    validation = get_path(row, "validation_results")
    if validation is not None and not isinstance(validation, dict):
        raise RowRejected(QuarantineReason.WRONG_TYPE, "'validation_results' must be an object")
    grounded = optional_number(row, "validation_results.grounded_fraction")
    mode = optional_str(row, "mode")
    return EvidenceRecord(
        run_id=run_id(ctx, natural_key(row, ("experiment_id",), ("task_class", "file", "mode"))),
        task_id=f"mode:{task_class}:{file}",
        source=ctx.source,
        score_class=ScoreClass.TELEMETRY,
        model_role=ModelRole.EXECUTOR,
        model_name=optional_str(row, "model"),
        text=output,
        instruction=optional_str(row, "prompt") or f"Carry out a {task_class} of {file} and list findings with validation steps.",
        source_files=[file],
        markers=drop_none({"latency_ms": latency_ms, "grounded_fraction": grounded, "mode": mode}),
        metadata=drop_none({"mode": mode, "validation_results": validation}),
        created_at=created,
        provenance=ctx.provenance(created),
    )


def convert_replay_run(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    """A ReplayRun logged by the runtime (distill.records.ReplayRun) back into evidence."""
    try:
        run = ReplayRun.model_validate(row)
    except ValidationError:
        if get_path(row, "created_at") in (None, ""):
            raise RowRejected(QuarantineReason.MISSING_TIMESTAMP, "replay run has no created_at") from None
        raise
    if not any(a.error is None for a in run.attempts):
        # every model call failed (a dead backend): no model answered, so there is nothing to score
        errors = "; ".join(a.error or "" for a in run.attempts)[:200]
        raise RowRejected(QuarantineReason.NO_MODEL_ANSWER, f"no model answered this run ({errors or 'no attempt'})")
    last = run.attempts[-1] if run.attempts else None
    retrieved = [
        drop_none({"id": r.id, "score": r.score, "rank": r.rank, "category": r.category, "source_run_id": r.source_run_id})
        for r in run.retrieved
    ]
    return EvidenceRecord(
        run_id=run_id(ctx, run.run_id),
        task_id=run.task_id or f"replay:{run.task_hash[:16]}",
        source=ctx.source,
        score_class=ScoreClass.TELEMETRY,
        model_role=ModelRole.EXECUTOR,
        model_name=last.model if last else None,
        text=run.final_output,
        instruction=run.task,
        retrieved_context={"mode": run.retrieval_mode, "k": run.k, "items": retrieved},
        markers={"final_verdict": run.final_verdict, "escalated": run.escalated, "attempts": len(run.attempts)},
        metadata=drop_none(
            {
                "task_hash": run.task_hash,
                "backends": [a.backend for a in run.attempts] or None,
                "validation_steps": list(run.bundle.validation_steps) or None,
            }
        ),
        created_at=run.created_at,
        provenance=ctx.provenance(run.created_at),
    )


CONVERTERS = {
    "auto_apply": convert_auto_apply,
    "outcomes": convert_outcome,
    "mode_experiments": convert_mode_experiment,
    "replay_runs": convert_replay_run,
}
