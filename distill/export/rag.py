"""RAG exporter: playbooks the replay runtime retrieves.

Which categories ship is distill.firewall's policy (by default accepted and partially accepted;
needs_human_review only with include_review; rejected never, and RagSample's schema refuses it
again).
"""

from __future__ import annotations

import re

from distill.export.gates import GateInput, meta_text
from distill.export.quarantine import Candidate, Decision, Drop
from distill.export.reader import Joined
from distill.firewall import ExportKind, refuse_category
from distill.hashing import content_id
from distill.records import QuarantineReason, RagSample
from distill.records.common import is_blank_text
from distill.validation_steps import extract_validation_steps

TITLE_CHARS = 120
_MARKUP = re.compile(r"^[\s#>*_`-]+|[\s*_`]+$")


def rag_id(run_id: str, sig: str) -> str:
    return content_id("rag", run_id, sig)


def make_title(text: str, fallback: str) -> str:
    """First meaningful line of the text without markdown decoration, else the fallback."""
    for line in text.splitlines():
        cleaned = _MARKUP.sub("", line).strip()
        if not is_blank_text(cleaned):
            return cleaned if len(cleaned) <= TITLE_CHARS else cleaned[: TITLE_CHARS - 1].rstrip() + "…"
    return fallback


def make_tags(j: Joined) -> list[str]:
    ev = j.evidence
    tags = [
        f"source:{ev.source}",
        f"category:{j.scored.category.value}",
        f"role:{ev.model_role.value}",
        f"class:{j.scored.score_class.value}",
        f"task:{ev.task_id}",
    ]
    if ev.model_name:
        tags.append(f"model:{ev.model_name}")
    return tags


def decide_rag(j: Joined, *, include_review: bool) -> Decision:
    category = j.scored.category
    refusal = refuse_category(ExportKind.RAG, category, include_review=include_review)
    if refusal is not None:
        return Drop(refusal.reason, [refusal.message])
    ev = j.evidence
    if is_blank_text(ev.text):
        return Drop(QuarantineReason.EMPTY_CONTENT, ["evidence text is empty: nothing to retrieve"])
    sid = rag_id(ev.run_id, ev.provenance.sig_hash)

    def build() -> RagSample:
        return RagSample(
            id=sid,
            title=make_title(ev.text, f"{ev.source}: {ev.task_id}"),
            text=ev.text,
            success_score=category,
            source_category=ev.source,
            source_run_id=ev.run_id,
            task_id=ev.task_id,
            tags=make_tags(j),
            validation_steps=extract_validation_steps(ev.text),
            source_files=list(ev.source_files),
            created_at=ev.created_at,
            provenance=ev.provenance,
        )

    return Candidate(sid, GateInput((ev.text,), tuple(ev.source_files), (meta_text(ev),)), build)
