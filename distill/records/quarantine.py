"""QuarantineRecord v1: one row per input row that a stage did not pass on, and why."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from distill.records.common import NonEmptyStr, Record


class QuarantineReason(StrEnum):
    # collect: the source line could not become evidence
    MALFORMED_JSON = "malformed_json"
    INVALID_UTF8 = "invalid_utf8"
    LINE_TOO_LONG = "line_too_long"
    TORN_LINE = "torn_line"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TIMESTAMP = "missing_timestamp"
    INVALID_TIMESTAMP = "invalid_timestamp"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    HIDDEN_TEXT = "hidden_text"  # invisible tag characters or selector runs (records.common.hidden_text_problem)
    UNREADABLE_SOURCE = "unreadable_source"
    # the seed's export taxonomy
    MISSING_PROVENANCE = "missing_provenance"
    MISSING_SOURCE_RUN_ID = "missing_source_run_id"
    EMPTY_CONTENT = "empty_content"
    SCHEMA_VIOLATION = "schema_violation"
    UNSAFE_SFT_CATEGORY = "unsafe_sft_category"
    UNSAFE_RAG_CATEGORY = "unsafe_rag_category"
    INVALID_PREFERENCE_PAIRING = "invalid_preference_pairing"
    HALLUCINATED_FILE_PATH = "hallucinated_file_path"
    DUPLICATE_ID = "duplicate_id"
    SELF_PAIRING = "self_pairing"
    CATEGORY_DISALLOWED = "category_disallowed"
    # gates beyond the seed
    SECRET_DETECTED = "secret_detected"
    EVAL_CONTAMINATION = "eval_contamination"
    NO_MODEL_ANSWER = "no_model_answer"  # a logged replay run whose every model call failed


class SourceRef(Record):
    """Where the dropped row came from; as much as is known (a torn line has no sig_hash)."""

    source_file: NonEmptyStr
    line_offset: int | None = None
    line_number: int | None = None
    sig_hash: str | None = None


class QuarantineRecord(Record):
    schema_version: Literal[1] = 1
    stage: NonEmptyStr = Field(description="collect | score | rag | sft | preference | ...")
    source: str | None = Field(None, description="stream name when known")
    reason: QuarantineReason
    errors: list[NonEmptyStr] = Field(min_length=1)
    record_id: str | None = Field(None, description="run id / sample id of the dropped row, when known")
    source_ref: SourceRef | None = None
    excerpt: str | None = Field(None, description="first bytes of the row, for a human looking at it")
    detail: dict[str, Any] = Field(default_factory=dict)
