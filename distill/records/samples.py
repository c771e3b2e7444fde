"""Export rows: RagSample, SftSample, PreferenceSample (v1).

The schema is the second layer of the contamination firewall: SftSample.quality_score admits
only accepted|partially_accepted, RagSample refuses rejected, and PreferenceSample refuses
self-pairs and identical texts, whatever the exporter in front of them does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.records.common import Category, NonEmptyStr, Provenance, Record, UtcDatetime

SftQuality = Literal["accepted", "partially_accepted"]
RagCategory = Literal["accepted", "partially_accepted", "needs_human_review"]


class RagSample(Record):
    schema_version: Literal[1] = 1
    id: NonEmptyStr
    title: NonEmptyStr
    text: NonEmptyStr
    success_score: RagCategory
    source_category: NonEmptyStr = Field(description="the source stream")
    source_run_id: NonEmptyStr
    task_id: NonEmptyStr
    tags: list[str] = Field(default_factory=list)
    validation_steps: list[str] = Field(default_factory=list)
    source_files: list[str] = Field(default_factory=list)
    created_at: UtcDatetime
    provenance: Provenance


class SftSample(Record):
    schema_version: Literal[1] = 1
    id: NonEmptyStr
    instruction: NonEmptyStr
    context: str = ""
    response: NonEmptyStr
    source_run_id: NonEmptyStr
    quality_score: SftQuality
    created_at: UtcDatetime
    provenance: Provenance


class PreferenceSample(Record):
    schema_version: Literal[1] = 1
    id: NonEmptyStr
    prompt: NonEmptyStr
    chosen: NonEmptyStr
    rejected: NonEmptyStr
    chosen_run_id: NonEmptyStr
    rejected_run_id: NonEmptyStr
    chosen_category: Category
    rejected_category: Category
    task_id: NonEmptyStr
    pairing: Literal["same_task", "cross_source"] = "same_task"
    reason: NonEmptyStr
    created_at: UtcDatetime
    chosen_provenance: Provenance
    rejected_provenance: Provenance

    @model_validator(mode="after")
    def _firewall(self) -> PreferenceSample:
        if self.chosen_run_id == self.rejected_run_id:
            raise ValueError("self-pair: chosen_run_id == rejected_run_id")
        if self.chosen.strip() == self.rejected.strip():
            raise ValueError("identical chosen and rejected texts")
        if self.chosen_category in (Category.REJECTED, Category.NEEDS_HUMAN_REVIEW):
            raise ValueError(f"chosen side cannot be {self.chosen_category}")
        return self
