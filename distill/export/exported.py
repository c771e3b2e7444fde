"""What an export already holds, as a run dedups against it: its sample ids, and (preference) its
pairs per task.

Every run asked this of the export file by parsing every row it holds, so a run after a 1 %
append paid for the whole dataset. A clean verification (`distill.export.verified`) already keeps
the digest of every id and of every row's task for the prefix of the file it covered: while that
prefix is the whole file as it is now (same bytes, same distill code and pair cap), the answers
come from there; otherwise from the rows, as before. Both give the same answers, by digest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.export.scored_index import key_digest
from distill.export.verified import VerifiedPrefix, cache_path, verification_basis
from distill.firewall import ExportKind
from distill.hashing import PrefixHash, WholeFileDigests, split_digests
from distill.jsonl import json_rows
from distill.receipts import code_fingerprint
from distill.workspace import Workspace


class Ids(Protocol):
    """Sample ids a run dedups against (a set of ids, or ExportedIds)."""

    def __contains__(self, sample_id: object, /) -> bool: ...

    def __len__(self) -> int: ...


class PerTask(Protocol):
    """Rows an export holds per task id, 0 for a task it does not hold (a Counter, or PairsPerTask)."""

    def __getitem__(self, task_id: str, /) -> int: ...


class ExportedIds:
    """Whether a sample id is in the export (by its 128-bit digest, as the caches keep ids)."""

    def __init__(self, digests: set[bytes]) -> None:
        self._digests = digests

    def __contains__(self, sample_id: object) -> bool:
        # an empty export (a first run) answers without a digest per row
        return bool(self._digests) and isinstance(sample_id, str) and key_digest(sample_id) in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def has(self, digest: bytes) -> bool:
        """By the id's key digest (a caller that needs the digest anyway)."""
        return digest in self._digests

    def has_all(self, digests: list[bytes]) -> bool:
        return self._digests.issuperset(digests)

    def has_none(self, digests: list[bytes]) -> bool:
        return self._digests.isdisjoint(digests)


class PairsPerTask:
    """How many rows of the export carry each task id (0 for a task it does not hold)."""

    def __init__(self, counts: dict[bytes, int]) -> None:
        self._counts = counts
        self._asked: dict[str, int] = {}  # a task is asked once per pair tried: digest it once

    def __getitem__(self, task_id: str) -> int:
        found = self._asked.get(task_id)
        if found is None:
            found = self._asked[task_id] = self._counts.get(key_digest(task_id), 0)
        return found

    def reach(self, digests: list[bytes], cap: int) -> np.ndarray:
        """For each task (by key digest): whether the export holds `cap` of its rows or more."""
        counts = self._counts
        return np.fromiter((counts.get(d, 0) >= cap for d in digests), dtype=bool, count=len(digests))


@dataclass(frozen=True)
class Exported:
    ids: ExportedIds
    per_task: PairsPerTask
    # the last clean verification, when it covers the whole file as it is now (the answers were
    # taken from its digests, not the rows); None when the rows were read
    verified: VerifiedPrefix | None

    @classmethod
    def nothing(cls) -> Exported:
        return cls(ExportedIds(set()), PairsPerTask({}), None)


def exported(ws: Workspace, kind: ExportKind, path: Path, *, max_pairs_per_task: int | None,
             known: WholeFileDigests | None = None) -> Exported:
    """The ids and per-task counts of the export at `path` as it is now. `known`: whole-file
    digests known without a read (an export as the last run left it is not read to see that)."""
    cap = max_pairs_per_task if kind is ExportKind.PREFERENCE else None
    prefix = VerifiedPrefix.load(cache_path(ws, kind), verification_basis(kind, code_fingerprint(["distill"]), cap))
    if prefix is not None and _covers(prefix, path, known):
        tasks, counts = np.unique(prefix.tasks, return_counts=True)
        return Exported(ExportedIds(set(_digests(prefix.ids))),
                        PairsPerTask(dict(zip(_digests(tasks), counts.tolist(), strict=True))), prefix)
    ids: set[bytes] = set()
    per_task: Counter[bytes] = Counter()
    for _, row in json_rows(path):
        ids.add(key_digest(str(row.get("id"))))
        if kind is ExportKind.PREFERENCE:
            per_task[key_digest(str(row.get("task_id")))] += 1
    return Exported(ExportedIds(ids), PairsPerTask(dict(per_task)), None)


def _digests(array: np.ndarray) -> list[bytes]:
    """The 16-byte digests of an S16 array as they are."""
    return split_digests(array.astype("S16").tobytes())


def _covers(prefix: VerifiedPrefix, path: Path, known: WholeFileDigests | None) -> bool:
    """Whether the verified prefix is the whole file: the same bytes, nothing after them."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return size == prefix.end and PrefixHash.resume(path, prefix.end, prefix.prefix_hash, known=known) is not None
