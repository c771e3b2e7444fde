"""The declarative adapter: any other JSONL stream, described by a [[sources]] table in distill.toml.

    [[sources]]
    name = "lint_bot"
    path = "lint_bot/*.jsonl"          # file or glob under ROOT/_kb
    role = "reviewer"
    score_class = "A"
    natural_key = ["run", "file"]
    task_id = "file"                   # dotted paths ("meta.task") work everywhere
    text = "comment"
    instruction = "prompt"
    created_at = "when"
    markers = ["outcome"]
    verdict = "outcome"                # optional: a marker the scorer maps to a category
    verdict_map = { merged = "accepted", amended = "partially_accepted", closed = "rejected" }

Without a verdict rule a mapped row scores needs_human_review, with a reason saying so.
"""

from __future__ import annotations

from typing import Any

from distill.config import FieldMapping
from distill.records import EvidenceRecord, ModelRole, QuarantineReason, ScoreClass
from distill.errors import RowRejected
from distill.sources.base import Converter, JsonlStream, RowContext
from distill.sources.fields import (
    first_timestamp,
    get_path,
    key_part,
    natural_key,
    optional_str,
    require_str,
    run_id,
    str_list,
)

ADAPTER = "mapping"


def verdict_rule(mapping: FieldMapping) -> dict[str, Any] | None:
    """The mapping's verdict rule as stored on evidence (score_rules reads it back)."""
    field = getattr(mapping, "verdict", None)
    table = getattr(mapping, "verdict_map", None) or {}
    if not field:
        return None
    return {"field": field, "map": {str(k): str(v) for k, v in sorted(table.items())}}


def make_converter(mapping: FieldMapping) -> Converter:
    """A converter closed over one FieldMapping (pure: the mapping is immutable config)."""
    role = ModelRole(mapping.role)
    score_class = ScoreClass(mapping.score_class)
    rule = verdict_rule(mapping)
    marker_fields = list(mapping.markers)
    if rule and rule["field"] not in marker_fields:
        marker_fields.append(rule["field"])

    def convert(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
        task_value = get_path(row, mapping.task_id)
        if task_value is None:
            raise RowRejected(QuarantineReason.MISSING_FIELD, f"missing '{mapping.task_id}' (task_id)")
        task_id = key_part(task_value)
        if task_id is None:
            raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{mapping.task_id}' (task_id) must be a string or int")
        text = require_str(row, mapping.text)
        created = first_timestamp(row, mapping.created_at)
        key = natural_key(row, tuple(mapping.natural_key)) if mapping.natural_key else None
        markers = {f: get_path(row, f) for f in marker_fields if get_path(row, f) is not None}
        metadata: dict[str, Any] = {"adapter": ADAPTER}
        metadata.update({f: get_path(row, f) for f in mapping.metadata if get_path(row, f) is not None})
        if rule:
            metadata["verdict_rule"] = rule
        return EvidenceRecord(
            run_id=run_id(ctx, key),
            task_id=task_id,
            source=ctx.source,
            score_class=score_class,
            model_role=role,
            model_name=optional_str(row, mapping.model_name) if mapping.model_name else None,
            text=text,
            instruction=optional_str(row, mapping.instruction) if mapping.instruction else None,
            source_files=str_list(row, mapping.source_files) if mapping.source_files else [],
            markers=markers,
            metadata=metadata,
            created_at=created,
            provenance=ctx.provenance(created),
        )

    return convert


def mapping_stream(mapping: FieldMapping) -> JsonlStream:
    return JsonlStream(name=mapping.name, pattern=mapping.path, convert=make_converter(mapping))
