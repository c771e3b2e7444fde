"""StageReceipt, RunSummary and DriftReport (v1): the forensic record of a `distill run`.

A receipt says what a stage read and wrote (path, bytes, sha256, record count of each file),
what it counted, under which configuration and code, and whether its output passed validation.
Its `content_hash` covers everything except wall-clock time, run identity and the checkout
state, so two runs over the same inputs give the same hash and a determinism violation (same
inputs, different outputs) is visible by comparing receipts. The schema refuses a receipt whose
content hash is wrong, or that claims to pass with counts that do not add up.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distill.hashing import canonical_json, sha256_hex
from distill.records.common import NonEmptyStr, Record, Sha256Hex, UtcDatetime
from distill.records.stage import Counts

Severity = Literal["ok", "warn", "alert"]
StageStatus = Literal["ran", "skipped", "not_run", "unavailable"]

# Fields of a StageReceipt that describe the content of the stage's work. Everything else
# (run_id, timestamps, duration, git state, code fingerprint, resume bookkeeping, notes) varies
# between runs that did the same work, so it stays out of the content hash.
RECEIPT_CONTENT_FIELDS = (
    "schema_version",
    "stage",
    "config_hash",
    "code_version",
    "inputs",
    "outputs",
    "inputs_hash",
    "outputs_hash",
    "totals",
    "by_source",
    "output_categories",
    "validation",
    "error",
)


class GitInfo(Record):
    """State of the distill code checkout; all None when it is not a git checkout."""

    sha: str | None = None
    branch: str | None = None
    dirty: bool | None = None


class FileDigest(Record):
    """One input or output: a file (records = JSONL lines), a directory, or a tree listing."""

    path: NonEmptyStr = Field(description="relative to ROOT when inside it, else absolute")
    kind: Literal["file", "dir", "tree"] = "file"
    bytes: int = Field(ge=0)
    sha256: Sha256Hex
    records: int | None = Field(None, ge=0, description="complete JSONL lines; None for non-JSONL")


def aggregate_hash(digests: list[FileDigest]) -> str:
    """Order-independent hash of a set of files that changes with any path or content."""
    pairs = sorted((d.path, d.kind, d.sha256) for d in digests)
    return sha256_hex(canonical_json(pairs))


class ValidationResult(Record):
    passed: bool
    errors: list[str] = Field(default_factory=list, description="'code: detail' lines")
    codes: list[str] = Field(default_factory=list, description="distinct error codes, sorted")

    @model_validator(mode="after")
    def _consistent(self) -> ValidationResult:
        if self.passed and self.errors:
            raise ValueError("validation cannot pass with errors")
        if not self.passed and not self.errors:
            raise ValueError("a failed validation must say why")
        return self


class ReuseRef(Record):
    """The earlier receipt a skipped stage stands on."""

    run_id: NonEmptyStr
    receipt: NonEmptyStr = Field(description="path of that receipt, relative to ROOT")
    content_hash: Sha256Hex
    origin_run_id: NonEmptyStr = Field(description="the run in which the stage actually ran")


class ResumeDecision(Record):
    action: Literal["ran", "skipped"]
    forced: bool = False
    reference_run_id: str | None = Field(None, description="last successful receipt compared against")
    reasons: list[str] = Field(default_factory=list, description="why it ran, or why it could skip")
    outputs_by_command: bool = Field(False, description="the outputs it found were a distill command's "
                                     "(`distill export` with its own flags), not a hand edit: taken as the new reference")


class DeterminismFinding(Record):
    """Same inputs, config and code as a trusted receipt, yet an output differs."""

    stage: NonEmptyStr
    kind: Literal["output_modified", "rerun_output_differs"]
    path: str | None = None
    expected_sha256: str | None = None
    found_sha256: str | None = None
    reference_run_id: NonEmptyStr
    detail: NonEmptyStr


def receipt_content_hash(data: dict[str, Any]) -> str:
    """Hash of a receipt's content fields (data as produced by model_dump(mode="json"))."""
    return sha256_hex(canonical_json({k: data.get(k) for k in RECEIPT_CONTENT_FIELDS}))


class StageReceipt(Record):
    schema_version: Literal[1] = 1
    run_id: NonEmptyStr
    stage: NonEmptyStr
    status: Literal["ran", "skipped"]
    git: GitInfo
    config_hash: Sha256Hex = Field(description="hash of the config sections this stage reads")
    full_config_hash: Sha256Hex
    code_version: NonEmptyStr
    code_fingerprint: Sha256Hex = Field(description="hash of the source files the stage runs")
    inputs: list[FileDigest]
    outputs: list[FileDigest]
    inputs_hash: Sha256Hex
    outputs_hash: Sha256Hex
    totals: Counts
    by_source: dict[str, Counts] = Field(default_factory=dict)
    output_categories: dict[str, int] = Field(
        default_factory=dict, description="rows per category in the outputs as written (re-read after the run)"
    )
    notes: list[str] = Field(default_factory=list)
    started_at: UtcDatetime
    finished_at: UtcDatetime
    duration_s: float = Field(ge=0)
    validation: ValidationResult
    error: str | None = Field(None, description="exception class and message when the stage raised")
    resume: ResumeDecision
    reused: ReuseRef | None = None
    determinism: list[DeterminismFinding] = Field(default_factory=list)
    content_hash: Sha256Hex

    @property
    def passed(self) -> bool:
        return self.validation.passed and self.error is None

    @model_validator(mode="after")
    def _self_check(self) -> StageReceipt:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at precedes started_at")
        if (self.status == "skipped") != (self.reused is not None):
            raise ValueError("a skipped receipt must reference the receipt it reuses (and only then)")
        if self.passed:
            unbalanced = [name for name, c in self.by_source.items() if not c.balanced]
            if not self.totals.balanced or unbalanced:
                raise ValueError(
                    "receipt claims to pass but counts do not add up "
                    f"(in = out + quarantined + skipped + deduped); sources: {unbalanced or 'totals'}"
                )
        if self.error is not None and self.validation.passed:
            raise ValueError("a stage that raised cannot pass validation")
        if aggregate_hash(self.inputs) != self.inputs_hash:
            raise ValueError("inputs_hash does not match inputs")
        if aggregate_hash(self.outputs) != self.outputs_hash:
            raise ValueError("outputs_hash does not match outputs")
        expected = receipt_content_hash(self.model_dump(mode="json"))
        if expected != self.content_hash:
            raise ValueError(f"content_hash {self.content_hash} does not match content ({expected})")
        return self


class StageSummary(Record):
    """One stage's line in a RunSummary (enough for drift to compare runs without receipts)."""

    stage: NonEmptyStr
    status: StageStatus
    passed: bool | None = Field(None, description="None when the stage did not run or skip")
    receipt: str | None = Field(None, description="path of the receipt, relative to ROOT")
    content_hash: str | None = None
    inputs_hash: str | None = None
    outputs_hash: str | None = None
    config_hash: str | None = None
    code_version: str | None = None
    code_fingerprint: str | None = None
    outputs: list[FileDigest] = Field(default_factory=list)
    totals: Counts = Field(default_factory=Counts)
    by_source: dict[str, Counts] = Field(default_factory=dict)
    output_categories: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    error_codes: list[str] = Field(default_factory=list)
    error: str | None = None
    reused_from: str | None = Field(None, description="run id of the receipt a skip reuses")
    determinism: list[DeterminismFinding] = Field(default_factory=list)
    duration_s: float = 0.0
    note: str | None = None
    outputs_by_command: bool = Field(False, description="ran on outputs a distill command wrote outside the run "
                                     "(ResumeDecision.outputs_by_command): a different output is expected")


class StopInfo(Record):
    stage: NonEmptyStr
    reason: NonEmptyStr


class RunSummary(Record):
    schema_version: Literal[1] = 1
    run_id: NonEmptyStr
    root: NonEmptyStr
    previous_run_id: str | None = None
    started_at: UtcDatetime
    finished_at: UtcDatetime
    duration_s: float = Field(ge=0)
    git: GitInfo
    full_config_hash: Sha256Hex
    code_version: NonEmptyStr
    options: dict[str, bool] = Field(default_factory=dict)
    stages: list[StageSummary]
    stopped_by: StopInfo | None = None
    overall_passed: bool
    run_hash: Sha256Hex = Field(description="hash of the stages' content hashes; equal for equal work")
    datasets: dict[str, int] = Field(default_factory=dict, description="records in each export")
    drift_severity: Severity = "ok"

    @model_validator(mode="after")
    def _self_check(self) -> RunSummary:
        failed = [s.stage for s in self.stages if s.passed is False]
        if self.overall_passed and (failed or self.stopped_by is not None):
            raise ValueError(f"run cannot pass with failed stages {failed}")
        expected = run_hash([(s.stage, s.content_hash) for s in self.stages])
        if expected != self.run_hash:
            raise ValueError("run_hash does not match the stages' content hashes")
        return self

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.stage == name), None)


def run_hash(pairs: list[tuple[str, str | None]]) -> str:
    return sha256_hex(canonical_json([[stage, h] for stage, h in pairs]))


class CountChange(Record):
    stage: NonEmptyStr
    scope: Literal["total", "source", "category", "reason"] = Field(
        description="category: rows per category in the stage's output"
    )
    key: NonEmptyStr = Field(description="'*' for totals, else the source/category/reason")
    metric: NonEmptyStr
    previous: int
    current: int
    pct_change: float | None = Field(None, description="None when previous is 0")
    over_threshold: bool


class DriftFlag(Record):
    severity: Literal["warn", "alert"]
    kind: NonEmptyStr
    stage: str | None = None
    message: NonEmptyStr


class StageChange(Record):
    stage: NonEmptyStr
    previous_content_hash: str | None
    current_content_hash: str | None
    current_status: StageStatus


class DriftReport(Record):
    schema_version: Literal[1] = 1
    run_id: NonEmptyStr
    previous_run_id: str | None = None
    threshold_pct: float
    severity: Severity
    flags: list[DriftFlag] = Field(default_factory=list)
    count_changes: list[CountChange] = Field(default_factory=list)
    changed_stages: list[StageChange] = Field(default_factory=list)
    deterministic_violation: list[DeterminismFinding] = Field(default_factory=list)

    @model_validator(mode="after")
    def _severity_matches(self) -> DriftReport:
        worst: Severity = "ok"
        for flag in self.flags:
            if flag.severity == "alert":
                worst = "alert"
            elif worst == "ok":
                worst = "warn"
        if self.deterministic_violation:
            worst = "alert"
        if worst != self.severity:
            raise ValueError(f"severity {self.severity} does not match its flags ({worst})")
        return self
