"""ScoredRun v1: the deterministic verdict on one EvidenceRecord, with the reasons for it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.records.common import Category, NonEmptyStr, Provenance, Record, ScoreClass, UtcDatetime


class ScoredRun(Record):
    schema_version: Literal[1] = 1
    evidence_run_id: NonEmptyStr
    task_id: NonEmptyStr
    source: NonEmptyStr
    category: Category
    reasons: list[NonEmptyStr] = Field(min_length=1)
    score_class: ScoreClass
    scorer_version: NonEmptyStr
    joined_parent_run_id: str | None = Field(
        None, description="class C: the verdict-bearing run whose category this row inherits"
    )
    created_at: UtcDatetime
    provenance: Provenance
