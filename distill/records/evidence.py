"""EvidenceRecord v1: one agent run, normalised, with provenance back to its source line."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from distill.records.common import IdStr, ModelRole, NonEmptyStr, PathStr, Provenance, Record, ScoreClass, UtcDatetime

JsonScalar = str | int | float | bool | None


class EvidenceRecord(Record):
    schema_version: Literal[1] = 1
    run_id: IdStr = Field(description="stable: derived from source + natural key")
    task_id: IdStr
    source: NonEmptyStr = Field(description="stream name, e.g. scrum_reviews")
    score_class: ScoreClass
    model_role: ModelRole
    model_name: str | None = None
    text: str = Field(description="the model output; may be empty only where emptiness is a signal")
    instruction: str | None = None
    source_files: list[PathStr] = Field(default_factory=list)
    retrieved_context: dict[str, Any] | None = None
    markers: dict[str, Any] = Field(
        default_factory=dict, description="verdict-bearing fields copied verbatim from the row"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    parent_run_id: IdStr | None = Field(None, description="explicit parent run, when the row names one")
    created_at: UtcDatetime
    provenance: Provenance
