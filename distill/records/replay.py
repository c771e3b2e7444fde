"""ReplayRun v1: one `replay` call, logged to ROOT/_kb/replay_runs.jsonl and collected as evidence.

It lives with the records (not in runtime/) because both sides read it: the runtime writes it
and the replay_runs source adapter turns it back into evidence, closing the loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.records.common import IdStr, NonEmptyStr, Record, Sha256Hex, UtcDatetime

FinalVerdict = Literal["validated_local", "escalated_validated", "escalated_failed", "failed", "error"]


class RetrievedItem(Record):
    id: NonEmptyStr
    score: float
    rank: int = Field(ge=1)
    category: str | None = None
    source_run_id: str | None = None
    title: str | None = None
    text: str = ""
    source_files: list[str] = Field(default_factory=list, description="paths the retrieved run cited")


class ContextBundle(Record):
    exemplars: list[RetrievedItem] = Field(default_factory=list, description="accepted, top 3")
    warnings: list[RetrievedItem] = Field(default_factory=list, description="partial, top 2")
    validation_steps: list[str] = Field(default_factory=list)
    trimmed: bool = False
    trimmed_items: list[str] = Field(default_factory=list, description="ids dropped to fit the budget")
    cut_items: list[str] = Field(default_factory=list, description="ids whose text was shortened")
    dropped_steps: int = Field(0, ge=0, description="validation steps dropped to fit the budget")
    prompt_chars: int = 0
    budget_chars: int = Field(0, ge=0, description="prompt size the context window allowed")
    nonce: str | None = Field(None, description="tag that fences retrieved text in the prompt")


class GateCheck(Record):
    name: NonEmptyStr
    passed: bool
    reason: NonEmptyStr


class GateResult(Record):
    passed: bool
    checks: list[GateCheck]


class Attempt(Record):
    backend: NonEmptyStr
    model: NonEmptyStr
    output: str = ""
    gate: GateResult | None = None
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    truncated: bool = False
    finish_reason: str | None = None
    escalation: bool = False
    error: str | None = None


class ReplayRun(Record):
    schema_version: Literal[1] = 1
    run_id: NonEmptyStr
    task: NonEmptyStr
    task_hash: Sha256Hex
    task_id: IdStr | None = Field(None, description="caller-supplied task id (batches, benchmarks)")
    retrieval_mode: str = Field(description="hybrid | dense | bm25 | jaccard | none")
    k: int = 0
    retrieved: list[RetrievedItem] = Field(default_factory=list)
    bundle: ContextBundle
    attempts: list[Attempt] = Field(default_factory=list)
    escalated: bool = False
    final_verdict: FinalVerdict
    final_output: str = ""
    warnings: list[str] = Field(default_factory=list, description="e.g. a stale index")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="retrieve, generate, total...")
    created_at: UtcDatetime
