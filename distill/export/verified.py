"""What a clean verification of a native export saw, so that the next one reads only the rows
appended since, and judges again only the rows whose run was scored again.

verify_export judges each row by its bytes (JSON, record schema, labels), by the category score
gave its run(s), and by counts across rows (repeated ids, pairs per task). After a verification
that found nothing wrong, this keeps: the length and hash of the whole-line prefix it covered,
the distill code and the pair cap it ran under, every category lookup it made (as key digests)
with the answer it got and the line of the row that asked, and the digests of the ids and tasks
it counted. The next verification trusts that prefix only when the file still starts with exactly
those bytes and the code and cap are the same. Every recorded lookup is then asked again of
today's scores (all at once): a prefix row whose lookups all get the same answer keeps its clean
verdict (its bytes and the counts are unchanged, and a row's verdict depends on nothing else), a
row whose run was scored again since is read and judged again, and the appended rows are read,
with the prefix's ids and tasks counted in. Anything else verifies the whole file again; the
cache only saves work (losing or damaging it costs one full verification).
"""

from __future__ import annotations

import dataclasses
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.export.scored_index import LOOKUP_VERSION, ScoredIndex, key_digest, lookup_keys, write_cache
from distill.firewall import ExportKind
from distill.hashing import LineEndHash, PrefixHash, canonical_json, sha256_hex
from distill.jsonl import loads
from distill.workspace import Workspace

VERIFIED_VERSION = 3  # 2: the line of the row behind each lookup; 3: prefixes hashed with xxh3-128


def cache_path(ws: Workspace, kind: ExportKind) -> Path:
    return ws.verified_path(kind.value)


def verification_basis(kind: ExportKind, code: str, max_pairs_per_task: int | None) -> str:
    return sha256_hex(canonical_json({"version": VERIFIED_VERSION, "kind": kind.value, "code": code,
                                      "max_pairs_per_task": max_pairs_per_task}))


class LookupLog:
    """The category lookups of one verification, in the order asked, with their answers and the
    line of the row being judged (`line`, set by the reader before each row)."""

    def __init__(self, index: ScoredIndex) -> None:
        self.index = index
        self.line = 0
        self._lines = array("q")
        self._has = array("B")
        self._runs = bytearray()
        self._versions = bytearray()
        self._answers: list[str | None] = []

    def category(self, run_id: Any, sig: Any) -> str | None:
        has, run, version = lookup_keys(run_id, sig)
        answer = self.index.category_of(has, run, version)
        self._has.append(has)
        self._lines.append(self.line)
        self._runs += run
        self._versions += version
        self._answers.append(answer)
        return answer

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None], np.ndarray]:
        return (np.frombuffer(self._has, dtype=np.uint8), np.frombuffer(bytes(self._runs), dtype="S16"),
                np.frombuffer(bytes(self._versions), dtype="S16"), self._answers,
                np.frombuffer(self._lines, dtype=np.int64))


@dataclass(frozen=True)
class VerifiedPrefix:
    """A clean prefix of the export file and what its verification depended on."""

    basis: str
    end: int
    lines: int
    prefix_hash: str
    has: np.ndarray  # per lookup: LOOKUP_NONE / RUN / VERSION
    runs: np.ndarray  # S16 run digests
    versions: np.ndarray  # S16 version digests
    answers: np.ndarray  # per lookup: index into names, -1 for None
    asked_at: np.ndarray  # per lookup: the line number of the row that asked
    names: list[str]
    ids: np.ndarray  # S16 digests of the ids counted, sorted
    tasks: np.ndarray  # S16 digests of the tasks counted (one per row), sorted

    @classmethod
    def load(cls, path: Path, basis: str) -> VerifiedPrefix | None:
        try:
            with np.load(path, allow_pickle=False) as saved:
                meta = loads(bytes(saved["meta"]))
                if meta.get("basis") != basis:
                    return None
                prefix = cls(basis, int(meta["end"]), int(meta["lines"]), str(meta["prefix_hash"]),
                             saved["has"], saved["runs"], saved["versions"], saved["answers"], saved["asked_at"],
                             [str(n) for n in meta["names"]], saved["ids"], saved["tasks"])
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return None  # missing, empty, truncated, not an npz, or not ours: verify the whole file
        n = len(prefix.has)
        if not (len(prefix.runs) == len(prefix.versions) == len(prefix.answers) == len(prefix.asked_at) == n) \
                or prefix.end < 0:
            return None
        return prefix

    def recheck(self, file: Path, index: ScoredIndex) -> PrefixCheck | None:
        """The prefix as today's scores see it, when the file still starts with it; None when it
        must be verified again as a whole."""
        if len(self.answers) and (self.answers.max() >= len(self.names) or self.answers.min() < -1):
            return None
        hasher = PrefixHash.resume(file, self.end, self.prefix_hash)
        if hasher is None:
            return None
        now = index.codes(self.has, self.runs, self.versions)
        names_now = np.array([*index.names, ""], dtype=object)[now]  # -1 picks ""
        then = np.array([*self.names, ""], dtype=object)[self.answers]
        changed = ((now < 0) != (self.answers < 0)) | (names_now != then)
        names = sorted(set(self.names) | set(index.names))
        remap = np.array([names.index(n) for n in index.names] + [-1], dtype=np.int64)
        today = dataclasses.replace(self, answers=remap[now], names=names)
        return PrefixCheck(hasher, np.unique(self.asked_at[changed]).tolist(), today)

    def lines_naming(self, revisions: Iterable[tuple[str, str]]) -> list[int] | None:
        """The lines of the prefix's rows that may name one of these (run id, sig_hash) evidence
        revisions, from the lookups their verification made: a lookup of one of them, or one with
        no revision digest to compare (a run id or sig_hash that is not a string). A superset of
        the rows that name one (a 128-bit digest may collide; the caller compares the strings).
        None unless every line of the prefix (numbered from 1) made a lookup: a row that made none
        cannot be answered for."""
        asked = np.unique(self.asked_at)
        if len(asked) != self.lines or (self.lines and (asked[0] != 1 or asked[-1] != self.lines)):
            return None
        wanted = np.array(sorted({key_digest(run_id, sig) for run_id, sig in revisions}), dtype="S16")
        maybe = (self.has != LOOKUP_VERSION) | np.isin(self.versions, wanted)
        return np.unique(self.asked_at[maybe]).tolist()

    def prior(self) -> Callable[[str, str], int]:
        """How many prefix rows carry an id / a task (rows_violations' `prior`)."""

        def count(what: str, value: str) -> int:
            keys = self.ids if what == "id" else self.tasks
            probe = np.array(key_digest(value), dtype="S16")
            return int(np.searchsorted(keys, probe, side="right") - np.searchsorted(keys, probe, side="left"))

        return count


@dataclass(frozen=True)
class PrefixCheck:
    """A verified prefix that still starts the file: the hash resumed at its end, the lines of its
    rows whose run was scored again since (to judge again), and the prefix with today's answers."""

    hasher: PrefixHash
    rescored: list[int]
    prefix: VerifiedPrefix


def save_verified(
    path: Path,
    *,
    basis: str,
    file: Path,
    tail: LineEndHash,
    lines: int,
    before: VerifiedPrefix | None,
    log: LookupLog,
    ids: Iterator[str],
    tasks: Iterator[tuple[str, int]],
) -> None:
    """Keep what a clean verification saw (the prefix it trusted plus the rows it read)."""
    end = tail.end
    sha = tail.hexdigest(file)
    if sha is None:
        return
    has, runs, versions, answers, asked_at = log.arrays()
    names = sorted({a for a in answers if a is not None} | set(before.names if before else []))
    code = {n: i for i, n in enumerate(names)}
    new_answers = np.array([code[a] if a is not None else -1 for a in answers], dtype=np.int64)
    id_digests = np.array([key_digest(i) for i in ids], dtype="S16")
    task_digests = np.array([key_digest(t) for t, n in tasks for _ in range(n)], dtype="S16")
    if before is not None:
        remap = np.array([code[n] for n in before.names] + [-1], dtype=np.int64)
        has = np.concatenate((before.has, has))
        runs = np.concatenate((before.runs, runs))
        versions = np.concatenate((before.versions, versions))
        asked_at = np.concatenate((before.asked_at, asked_at))
        new_answers = np.concatenate((remap[before.answers], new_answers))
        id_digests = np.concatenate((before.ids, id_digests))
        task_digests = np.concatenate((before.tasks, task_digests))
    meta = {"basis": basis, "end": end, "lines": lines, "prefix_hash": sha, "names": names}
    write_cache(path, meta, has=has.astype(np.uint8), runs=runs, versions=versions, answers=new_answers,
                asked_at=asked_at, ids=np.sort(id_digests), tasks=np.sort(task_digests))
