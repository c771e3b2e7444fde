"""Export rows: RagSample, SftSample, PreferenceSample (v1).

The schema is the second layer of the contamination firewall: each category field admits only
what distill.firewall says may ever ship to that export (SftSample.quality_score:
accepted|partially_accepted; RagSample.success_score: never rejected), and PreferenceSample
refuses self-pairs, identical texts and a rejected or unreviewed preferred side, whatever the
exporter in front of them does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from distill.firewall import CHOSEN_NEVER, NEVER, ExportKind, pair_problems, require_shippable
from distill.records.common import Category, NonEmptyStr, Provenance, Record, UtcDatetime, VisibleStr

SftQuality = Annotated[Category, AfterValidator(require_shippable(ExportKind.SFT))]
RagCategory = Annotated[Category, AfterValidator(require_shippable(ExportKind.RAG))]


class RagSample(Record):
    schema_version: Literal[1] = 1
    id: NonEmptyStr
    title: VisibleStr
    text: VisibleStr
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
    instruction: VisibleStr
    context: str = ""
    response: VisibleStr
    source_run_id: NonEmptyStr
    quality_score: SftQuality
    created_at: UtcDatetime
    provenance: Provenance


class PreferenceSample(Record):
    schema_version: Literal[1] = 1
    id: NonEmptyStr
    prompt: VisibleStr
    chosen: VisibleStr
    rejected: VisibleStr
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
        problems = [detail for _, detail in pair_problems(self.chosen_run_id, self.rejected_run_id, self.chosen, self.rejected)]
        if self.chosen_category in CHOSEN_NEVER:
            problems.append(f"chosen side cannot be {self.chosen_category.value}")
        if self.rejected_category in NEVER[ExportKind.PREFERENCE]:
            problems.append(f"rejected side cannot be {self.rejected_category.value}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
