"""Score checkpoints: what each evidence partition's already-scored lines produced, so that a run
after collect appended rows parses and scores only those rows, and re-scores only the extraction
rows whose task gained or lost a verdict-bearing parent.

Per partition: the length and sha256 of its whole-line prefix, the sha256 of the scored mirror
file as written, the category of every scored line, the quarantine rows of its bad lines, the
verdict-bearing parents it contributes (pass 1) and, for every extraction (class C) row, where it
is and which task it joins. A run trusts a partition's checkpoint only when the `distill` code,
the [score] settings and the format are unchanged (one basis for the file) and the evidence file
still starts with exactly those bytes; the scored lines are reused only when the mirror file is
also byte for byte what was written. An extraction row is re-scored when the digest of its
task's parent list differs from the one it was scored with. Anything else is scored from the
start, and `distill run --force` ignores the checkpoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distill.config import Settings
from distill.hashing import canonical_json, prefix_sha256, sha256_hex
from distill.jsonl import dumps, write_atomic
from distill.receipts import code_fingerprint

CHECKPOINT_VERSION: Literal[1] = 1

ParentEntry = tuple[str, str, str, str]
"""(run_id, task_id, category, created_at ISO) of a verdict-bearing parent, in evidence order."""
ExtractionEntry = tuple[int, int, str, str]
"""(index of its scored line, byte offset of its evidence line, task_id, category) of a class C row."""


class PartitionCheckpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    end: int = Field(ge=0)
    lines: int = Field(ge=0)
    sha256: str
    scored_sha256: str
    categories: list[str] = Field(description="the category of each scored line, in order")
    problems: list[str] = Field(default_factory=list, description="quarantine rows of the prefix, as written")
    parents: list[ParentEntry] = Field(default_factory=list)
    extraction: list[ExtractionEntry] = Field(default_factory=list)


class _CheckpointFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    basis: str
    partitions: dict[str, PartitionCheckpoint]
    task_parents: dict[str, str] = Field(description="digest of each joined task's parent list when last scored")


def score_basis(settings: Settings, scorer: str) -> str:
    return sha256_hex(canonical_json({
        "version": CHECKPOINT_VERSION,
        "code": code_fingerprint(["distill"]),
        "score": settings.score.model_dump(mode="json"),
        "scorer": scorer,
    }))


def parents_digest(entries: list[ParentEntry]) -> str:
    return sha256_hex(canonical_json(entries))


def file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


class ScoreCheckpoints:
    def __init__(self, basis: str, saved: _CheckpointFile | None = None) -> None:
        self.basis = basis
        self.partitions = saved.partitions if saved is not None else {}
        self.task_parents = saved.task_parents if saved is not None else {}
        self.next: dict[str, PartitionCheckpoint] = {}

    @classmethod
    def load(cls, path: Path, basis: str) -> ScoreCheckpoints:
        """The saved checkpoints when made on this basis; none otherwise (only costs a full pass)."""
        try:
            saved = _CheckpointFile.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            return cls(basis)
        return cls(basis, saved if saved.basis == basis else None)

    def resume(self, rel: str, path: Path) -> tuple[PartitionCheckpoint, Any] | None:
        """The partition's checkpoint and a sha256 object over its prefix, when the evidence file
        still starts with the bytes it was made from."""
        found = self.partitions.get(rel)
        if found is None:
            return None
        hasher = prefix_sha256(path, found.end)
        if hasher is None or hasher.hexdigest() != found.sha256:
            return None
        return found, hasher

    def save(self, path: Path, task_parents: dict[str, str]) -> None:
        payload: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "basis": self.basis,
            "partitions": {rel: cp.model_dump(mode="json") for rel, cp in sorted(self.next.items())},
            "task_parents": dict(sorted(task_parents.items())),
        }
        write_atomic(path, dumps(payload) + b"\n")
