"""Score checkpoints: what each evidence partition's already-scored lines produced, so that a run
after collect appended rows parses and scores only those rows, and re-scores only the extraction
rows whose task gained or lost a verdict-bearing parent.

Per partition: the length and hash of its whole-line prefix, the sha256 of the scored mirror
file as written, the category and the xxh3-128 of every scored line (a grown partition's mirror
is then hashed whole but not read line by line), the quarantine rows of its bad lines, the
verdict-bearing parents it contributes (pass 1) and, for every extraction (class C) row, where it
is, what its join reads (task, named parent, created_at) and the parent the join chose and how
(the verdict is a function of those and the task alone). A run trusts a partition's checkpoint
only when the `distill` code, the [score] settings and the format are unchanged (one basis for
the file) and the evidence file still starts with exactly those bytes; the scored lines are
reused only when the mirror file is also byte for byte what was written. When the digest of a
task's parent list differs from the one its rows were scored with, each of its extraction rows
is joined again from its entry, and re-scored (its evidence line parsed, its scored line
rewritten) only when the join chooses another parent, or finds the same one another way: a late
verdict for a task re-scores the rows it now passes its category to, not every row of the task.
Anything else is scored from the start, and `distill run --force` ignores the checkpoints.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from distill.checkpoint_file import CheckpointFile
from distill.config import Settings
from distill.hashing import PrefixHash, WholeFileDigests, WholeFileSha256, canonical_json, sha256_hex
from distill.receipts import code_fingerprint

CHECKPOINT_VERSION: Literal[5] = 5
# 2: prefixes hashed with xxh3-128, not sha256; 3: the scored lines' digests; 4: extraction rows' join keys;
# 5: each extraction row's join choice instead of a digest of its verdict

ParentEntry = tuple[str, str, str, str]
"""(run_id, task_id, category, created_at ISO) of a verdict-bearing parent, in evidence order."""
JoinChoice = tuple[str, str, str]
"""(run_id, category, JoinHow name) of the parent a class C row's join chose: with the row's task,
all its inherited verdict is made of (score_rules.joined), so equal choices, equal scored lines."""
ExtractionEntry = tuple[int, int, str, str, str | None, str, JoinChoice | None]
"""(index of its scored line, byte offset of its evidence line, task_id, category, parent_run_id,
created_at ISO, its join's choice or None: distill.score.join_choice) of a class C row."""
LINE_DIGEST = 16  # bytes of a scored line's digest (xxh3-128)
CATEGORY_CODES = {"accepted": "a", "partially_accepted": "p", "rejected": "r", "needs_human_review": "h"}
CODE_CATEGORIES = {code: category for category, code in CATEGORY_CODES.items()}


# One evidence partition's checkpoint is one line of the checkpoint file (score._scored writes
# it). Each pass validates the fields it uses and skips the others unbuilt: pass 1 the prefix and
# its parents, pass 2 the scored lines; parsing the line whole in both passes cost ~1.7 s CPU of a
# run at 1,000,000 rows, the two views ~1.1 s (by hand).


class PartitionPrefix(BaseModel):
    """Pass 1's view of a partition's checkpoint: the prefix it covers and the parents it gives."""

    model_config = ConfigDict(extra="ignore")

    end: int = Field(ge=0)
    lines: int = Field(ge=0)
    prefix_hash: str  # distill.hashing.PREFIX_HASH of the evidence prefix
    parents: list[ParentEntry] = Field(default_factory=list)


class PartitionCheckpoint(BaseModel):
    """Pass 2's view of a partition's checkpoint: what its scored lines were (all but the parents)."""

    model_config = ConfigDict(extra="ignore")

    end: int = Field(ge=0)
    lines: int = Field(ge=0)
    prefix_hash: str
    scored_sha256: str  # sha256 of the scored mirror as written
    categories: str = Field(description="one code per scored line (CATEGORY_CODES), in order")
    line_digests: str = Field(default="", description="base64 of each scored line's xxh3-128, in order")
    problems: list[str] = Field(default_factory=list, description="quarantine rows of the prefix, as written")
    extraction: list[ExtractionEntry] = Field(default_factory=list)

    def digests(self) -> bytes | None:
        """The scored lines' digests, one per category; None when they are not that."""
        try:
            raw = base64.b64decode(self.line_digests, validate=True)
        except ValueError:
            return None
        return raw if len(raw) == LINE_DIGEST * len(self.categories) else None

    def codes_valid(self) -> bool:
        """Whether every code in `categories` is one of CATEGORY_CODES'."""
        return set(self.categories) <= CODE_CATEGORIES.keys()


_View = TypeVar("_View", PartitionPrefix, PartitionCheckpoint)


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[5]
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
    """The checkpoint file (distill.checkpoint_file): a header (format, basis, task digests), then
    one line per partition, read one at a time; the next run's file is written as partitions are
    scored."""

    def __init__(self, path: Path, basis: str, *, known: WholeFileDigests | None = None,
                 known_sha256: WholeFileSha256 | None = None) -> None:
        """`known`: whole-file digests known without a read (an evidence file unchanged since its
        checkpoint is then not read to check it); `known_sha256`: the same for a mirror's sha256
        and line count (one as its checkpoint wrote it is not hashed to tell)."""
        self.path = path
        self.basis = basis
        self.known = known
        self.known_sha256 = known_sha256

        def accept(line: bytes) -> _Header | None:
            header = _Header.model_validate_json(line)
            return header if header.basis == basis else None

        self._file = CheckpointFile(path, accept)
        self.task_parents: dict[str, str] = self._file.header.task_parents if self._file.header else {}

    def _view(self, rel: str, view: type[_View]) -> tuple[_View, bytes] | None:
        """One pass's view of the partition's line and the line as saved; None when it has none
        or the view does not validate."""
        payload = self._file.payload(rel)
        if payload is None:
            return None
        try:
            return view.model_validate_json(payload), payload
        except ValueError:
            return None

    def read(self, rel: str) -> tuple[PartitionCheckpoint, bytes] | None:
        """Pass 2's view of the partition's checkpoint and its JSON as saved (a checkpoint written
        again the same is kept where it is instead)."""
        return self._view(rel, PartitionCheckpoint)

    def resume(self, rel: str, path: Path) -> tuple[PartitionPrefix, PrefixHash] | None:
        """Pass 1's view of the partition's checkpoint and the hash of its prefix, when the
        evidence file still starts with the bytes it was made from."""
        viewed = self._view(rel, PartitionPrefix)
        found = viewed[0] if viewed is not None else None
        hashed = PrefixHash.resume(path, found.end, found.prefix_hash, known=self.known) if found is not None else None
        return None if found is None or hashed is None else (found, hashed)

    def write(self, rel: str, checkpoint: dict[str, Any]) -> None:
        """One partition's next checkpoint (the file's once `save` is called)."""
        self._file.write(rel, checkpoint)

    def keep(self, rel: str) -> bool:
        """The partition's saved checkpoint carried over as it is (False: it has none)."""
        return self._file.keep(rel)

    def save(self, task_parents: dict[str, str]) -> None:
        """The partitions written and kept this run become the file's, under a new header."""
        self._file.save({"version": CHECKPOINT_VERSION, "basis": self.basis,
                         "task_parents": dict(sorted(task_parents.items()))})

    def discard(self) -> None:
        self._file.discard()
