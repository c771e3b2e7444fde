"""SFT exporter: instruction -> response rows from runs that were accepted.

Which categories ship is distill.firewall's policy (accepted; partially_accepted only with
include_partial; rejected and needs_human_review never, and SftSample's schema refuses both
again). A row needs an instruction -> response shape: extraction-class rows (distilled facts,
escalations, audit facts: class C or extractor role) have no instruction and are quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distill.export.gates import GateInput, meta_text
from distill.export.quarantine import Candidate, Decision, Drop
from distill.export.reader import Joined
from distill.firewall import ExportKind, refuse_category
from distill.hashing import content_id
from distill.records import EvidenceRecord, ModelRole, QuarantineReason, ScoreClass, SftSample
from distill.records.common import is_blank_text

CONTEXT_CHARS = 1500


def sft_id(run_id: str, sig: str) -> str:
    return content_id("sft", run_id, sig)


def _file(ev: EvidenceRecord) -> str:
    return ev.source_files[0] if ev.source_files else ev.task_id


def _meta(ev: EvidenceRecord, *keys: str) -> str | None:
    for key in keys:
        value = ev.metadata.get(key)
        if value is None:
            value = ev.markers.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and not is_blank_text(str(value)):
            return str(value).strip()
    return None


def _scrum(ev: EvidenceRecord) -> str:
    return (f"Review `{_file(ev)}` against the product requirements and the open change proposals. "
            "Report each finding with severity, confidence and a patch, then the validation steps.")


def _observer(ev: EvidenceRecord) -> str:
    return (f"Check the latest review of `{_file(ev)}` against the code and decide: accept, reject or cycle. "
            "Explain the verdict.")


def _audit(ev: EvidenceRecord) -> str:
    topic = _meta(ev, "topic", "check")
    where = f" in `{ev.source_files[0]}`" if ev.source_files else ""
    return f"Audit{where}{f' for: {topic}' if topic else ''}. Report the finding with its severity and how to verify the fix."


def _contract(ev: EvidenceRecord) -> str:
    contractor = _meta(ev, "contractor")
    permit = _meta(ev, "permit_id") or ev.task_id
    who = f"contractor '{contractor}' on " if contractor else ""
    return f"Analyse {who}permit '{permit}': check licence, insurance and violations, then recommend with risk markers."


def _auto_apply(ev: EvidenceRecord) -> str:
    return f"Write a minimal unified-diff patch for `{_file(ev)}` that fixes the findings of its latest review."


def _outcome(ev: EvidenceRecord) -> str:
    scenario = _meta(ev, "scenario", "scenario_id") or ev.task_id
    return f"Handle this scenario and report each step's outcome with citations: {scenario}"


def _mode(ev: EvidenceRecord) -> str:
    task_class = _meta(ev, "task_class") or ev.task_id
    return f"Run {task_class} on `{_file(ev)}` and report findings with validation steps."


def _replay(ev: EvidenceRecord) -> str:
    return _meta(ev, "task") or f"Complete task {ev.task_id}."


def _default(ev: EvidenceRecord) -> str:
    target = f" on `{ev.source_files[0]}`" if ev.source_files else ""
    return f"Complete the {ev.source.replace('_', ' ')} task '{ev.task_id}'{target}."


TEMPLATES: dict[str, Callable[[EvidenceRecord], str]] = {
    "scrum_reviews": _scrum,
    "observer_reviews": _observer,
    "audits": _audit,
    "contract_analyses": _contract,
    "auto_apply": _auto_apply,
    "outcomes": _outcome,
    "mode_experiments": _mode,
    "replay_runs": _replay,
}


def has_instruction_shape(ev: EvidenceRecord, score_class: ScoreClass) -> bool:
    """Extraction rows (class C, extractor role) state facts; nobody asked them anything."""
    return score_class is not ScoreClass.EXTRACTION and ev.model_role is not ModelRole.EXTRACTOR


def synthesize_instruction(ev: EvidenceRecord) -> str:
    """The instruction the run answered: the row's own when present, else a per-source template."""
    if ev.instruction and not is_blank_text(ev.instruction):
        return ev.instruction.strip()
    return TEMPLATES.get(ev.source, _default)(ev)


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return None if is_blank_text(value) else value.strip()
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, list) and value and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return None


def render_context(ev: EvidenceRecord) -> str:
    """What the model could see: retrieved context (scalar fields, sorted) and cited files."""
    parts: list[str] = []
    ctx = ev.retrieved_context or {}
    for key in sorted(ctx):
        rendered = _scalar(ctx[key])
        if rendered:
            parts.append(f"{key}: {rendered}")
    if ev.source_files:
        parts.append("files: " + ", ".join(ev.source_files))
    text = "\n".join(parts)
    return text if len(text) <= CONTEXT_CHARS else text[: CONTEXT_CHARS - 1] + "…"


def decide_sft(j: Joined, *, include_partial: bool) -> Decision:
    category = j.scored.category
    refusal = refuse_category(ExportKind.SFT, category, include_partial=include_partial)
    if refusal is not None:
        return Drop(refusal.reason, [refusal.message])
    ev = j.evidence
    if not has_instruction_shape(ev, j.scored.score_class):
        return Drop(
            QuarantineReason.CATEGORY_DISALLOWED,
            [f"{ev.source} is extraction-class (class {j.scored.score_class.value}, role {ev.model_role.value}): "
             "no instruction -> response shape"],
        )
    if is_blank_text(ev.text):
        return Drop(QuarantineReason.EMPTY_CONTENT, ["evidence text is empty: no response to learn from"])
    sid = sft_id(ev.run_id, ev.provenance.sig_hash)
    instruction = synthesize_instruction(ev)
    context = render_context(ev)

    def build() -> SftSample:
        return SftSample(
            id=sid,
            instruction=instruction,
            context=context,
            response=ev.text,
            source_run_id=ev.run_id,
            quality_score=category,
            created_at=ev.created_at,
            provenance=ev.provenance,
        )

    return Candidate(sid, GateInput((instruction, context, ev.text), tuple(ev.source_files), (meta_text(ev),)), build)
