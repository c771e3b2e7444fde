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

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distill.config import Settings
from distill.hashing import PrefixHash, canonical_json, sha256_hex
from distill.jsonl import atomic_writer, dumps, loads
from distill.receipts import code_fingerprint

CHECKPOINT_VERSION: Literal[1] = 1

ParentEntry = tuple[str, str, str, str]
"""(run_id, task_id, category, created_at ISO) of a verdict-bearing parent, in evidence order."""
ExtractionEntry = tuple[int, int, str, str]
"""(index of its scored line, byte offset of its evidence line, task_id, category) of a class C row."""
CATEGORY_CODES = {"accepted": "a", "partially_accepted": "p", "rejected": "r", "needs_human_review": "h"}
CODE_CATEGORIES = {code: category for category, code in CATEGORY_CODES.items()}


class PartitionCheckpoint(BaseModel):
    """One evidence partition's checkpoint: one line of the checkpoint file, read when needed."""

    model_config = ConfigDict(extra="forbid")

    end: int = Field(ge=0)
    lines: int = Field(ge=0)
    sha256: str
    scored_sha256: str
    categories: str = Field(description="one code per scored line (CATEGORY_CODES), in order")
    problems: list[str] = Field(default_factory=list, description="quarantine rows of the prefix, as written")
    parents: list[ParentEntry] = Field(default_factory=list)
    extraction: list[ExtractionEntry] = Field(default_factory=list)

    def category_list(self) -> list[str] | None:
        try:
            return [CODE_CATEGORIES[c] for c in self.categories]
        except KeyError:
            return None


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    basis: str
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


class ScoreCheckpoints:
    """The checkpoint file: a header line (format, basis, task digests), then one line per
    partition (`"<rel>"\t{checkpoint}`), read one at a time so that memory holds one partition's
    checkpoint, not all of them. The next run's file is written the same way, as partitions are
    scored."""

    def __init__(self, path: Path, basis: str) -> None:
        self.path = path
        self.basis = basis
        self.task_parents: dict[str, str] = {}
        self.offsets: dict[str, int] = {}
        self._parts_path = path.with_name(path.name + ".parts.tmp")
        self._out: Any = None
        self._load()

    def _load(self) -> None:
        """Index the saved checkpoints if they were made on this basis (anything else: none)."""
        try:
            with open(self.path, "rb") as fh:
                header = _Header.model_validate_json(fh.readline())
                if header.basis != self.basis:
                    return
                offsets: dict[str, int] = {}
                while True:
                    at = fh.tell()
                    line = fh.readline()
                    if not line:
                        break
                    rel = loads(line[: line.index(b"\t")])
                    if not isinstance(rel, str):
                        return
                    offsets[rel] = at
        except (OSError, ValueError):
            return
        self.task_parents, self.offsets = header.task_parents, offsets

    def get(self, rel: str) -> PartitionCheckpoint | None:
        at = self.offsets.get(rel)
        if at is None:
            return None
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                line = fh.readline()
            return PartitionCheckpoint.model_validate_json(line[line.index(b"\t") + 1:])
        except (OSError, ValueError):
            return None

    def resume(self, rel: str, path: Path) -> tuple[PartitionCheckpoint, PrefixHash] | None:
        """The partition's checkpoint and the hash of its prefix, when the evidence file still
        starts with the bytes it was made from."""
        found = self.get(rel)
        hashed = PrefixHash.resume(path, found.end, found.sha256) if found is not None else None
        return None if found is None or hashed is None else (found, hashed)

    def write(self, rel: str, checkpoint: dict[str, Any]) -> None:
        """One partition's next checkpoint (kept in a side file until `save`)."""
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed by save/discard
        self._out.write(dumps(rel) + b"\t" + dumps(checkpoint) + b"\n")

    def save(self, task_parents: dict[str, str]) -> None:
        """Replace the checkpoint file: the header, then the partitions written this run."""
        header = {"version": CHECKPOINT_VERSION, "basis": self.basis, "task_parents": dict(sorted(task_parents.items()))}
        if self._out is not None:
            self._out.close()
        with atomic_writer(self.path) as fh:
            fh.write(dumps(header) + b"\n")
            if self._out is not None:
                with open(self._parts_path, "rb") as parts:
                    shutil.copyfileobj(parts, fh, 1 << 20)
        self.discard()

    def discard(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self._parts_path.unlink(missing_ok=True)
