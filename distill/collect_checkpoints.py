"""Collect checkpoints: what the already-read part of each JSONL source file produced, so that a
run after an append reads only the new lines.

A file's checkpoint holds the length of its prefix in whole lines, the hash of those bytes, the
quarantine rows the prefix produced (as written) and the evidence keys of its other lines. A run
trusts a checkpoint only when

1. the `distill` code, the [collect] and [sources] settings and the checkpoint format are the
   ones it was made with (one basis hash for the whole file),
2. the source file still starts with exactly those bytes (`distill.hashing.PREFIX_HASH` of the prefix), and
3. every key it lists is in the evidence collected so far.

Then a full read would quarantine the prefix's bad lines exactly as before and find every other
line already collected (deduped), which is what the run counts without reading them. Anything
else (an edited or truncated source, evidence deleted, a rule or a setting changed) reads that
file from the start; `distill run --force` ignores the checkpoints altogether. Only sources whose
converters are part of `distill` (the built-in streams and [[sources]] mappings) are
checkpointed: a plugin's code is not in the basis.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from distill.config import Settings
from distill.hashing import PrefixHash, WholeFileDigests, canonical_json, sha256_hex
from distill.jsonl import ReadProgress, dumps, iter_raw_lines, read_sealed, write_sealed
from distill.receipts import code_fingerprint
from distill.sources.base import JsonlStream, Source

CHECKPOINT_VERSION: Literal[2] = 2  # 2: prefixes hashed with xxh3-128, not sha256
KEY_BYTES = 16


def split_keys(blob: bytes | bytearray) -> list[bytes]:
    """The keys a blob of them holds, in order (made by numpy: a million in ~0.06 s CPU against
    0.1-0.2 s for a slice per key, by hand). Raises ValueError when it is not a whole number of keys."""
    if len(blob) % KEY_BYTES:
        raise ValueError("not a whole number of keys")
    return np.frombuffer(blob, dtype=f"V{KEY_BYTES}").tolist()


class FileCheckpoint(BaseModel):
    """What the first `end` bytes (`lines` whole lines) of one source file produced."""

    model_config = ConfigDict(extra="forbid")

    source: str
    end: int = Field(ge=0)
    lines: int = Field(ge=0)
    prefix_hash: str
    units: int = Field(ge=0, description="input units (non-blank lines) in the prefix")
    reasons: dict[str, int] = Field(default_factory=dict, description="quarantined units by reason")
    quarantine: list[str] = Field(default_factory=list, description="their rows, as written")
    keys: str = Field("", description="base64 of the 16-byte evidence keys of the other units")

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())

    def key_bytes(self) -> bytes:
        return base64.b64decode(self.keys)


class EvidenceCheckpoint(BaseModel):
    """The dedup keys of the first `end` bytes of one evidence file (collect's own output, which
    it only appends to): the next run parses just the lines after them."""

    model_config = ConfigDict(extra="forbid")

    end: int = Field(ge=0)
    prefix_hash: str
    keys: str = Field("", description="base64 of the 16-byte keys of the rows in the prefix")

    def key_bytes(self) -> bytes:
        return base64.b64decode(self.keys)


class _CheckpointFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[2]
    basis: str
    files: dict[str, FileCheckpoint]
    evidence: dict[str, EvidenceCheckpoint] = Field(default_factory=dict)


def checkpoint_basis(settings: Settings) -> str:
    """Everything a prefix's outcome depends on besides its bytes and the evidence."""
    return sha256_hex(canonical_json({
        "version": CHECKPOINT_VERSION,
        "code": code_fingerprint(["distill"]),
        "collect": settings.collect.model_dump(mode="json"),
        "sources": [m.model_dump(mode="json") for m in settings.sources],
    }))


def resumable(source: Source) -> bool:
    """A JSONL stream whose converter is distill's own code (covered by the basis)."""
    return isinstance(source, JsonlStream) and getattr(source.convert, "__module__", "").startswith("distill.")


class FileRecorder:
    """Builds one file's next checkpoint while collect reads it: starts from the checkpoint it
    resumed (if any) and adds the units of whole lines read this time."""

    def __init__(self, source: str, resumed: FileCheckpoint | None, hashed: PrefixHash) -> None:
        self.source = source
        self.resumed = resumed
        self.hashed = hashed  # every byte read so far, from offset 0
        self.units = resumed.units if resumed else 0
        self.reasons: Counter[str] = Counter(resumed.reasons if resumed else {})
        self.quarantine: list[str | None] = list(resumed.quarantine) if resumed else []
        self.keys = bytearray(resumed.key_bytes() if resumed else b"")
        self.progress: ReadProgress | None = None

    def resume_at(self) -> ReadProgress | None:
        return ReadProgress(self.resumed.end, self.resumed.lines) if self.resumed is not None else None

    def evidence(self, key: bytes) -> None:
        self.units += 1
        self.keys += key

    def quarantined(self, reason: str) -> int:
        """Count a quarantined unit; returns the slot its row (known once written) goes into."""
        self.units += 1
        self.reasons[reason] += 1
        self.quarantine.append(None)
        return len(self.quarantine) - 1

    def written(self, slot: int, line: bytes) -> None:
        self.quarantine[slot] = line.decode()

    def checkpoint(self, path: Path) -> FileCheckpoint | None:
        """The checkpoint for what was read, or None when the read failed part way."""
        progress = self.progress
        if progress is None or progress.failed or any(q is None for q in self.quarantine):
            return None
        sha = self.hashed.hexdigest_to(path, progress.end)  # an unterminated last line is left out
        if sha is None:
            return None
        return FileCheckpoint(
            source=self.source, end=progress.end, lines=progress.lines, prefix_hash=sha,
            units=self.units, reasons=dict(sorted(self.reasons.items())),
            quarantine=[q for q in self.quarantine if q is not None], keys=base64.b64encode(bytes(self.keys)).decode(),
        )


class _GrowingEvidence:
    """An evidence file hashed from offset 0 to its end, with the keys of its lines."""

    def __init__(self, hashed: PrefixHash, keys: bytearray) -> None:
        self.hashed, self.keys = hashed, keys

    def checkpoint(self) -> EvidenceCheckpoint:
        return EvidenceCheckpoint(end=self.hashed.at, prefix_hash=self.hashed.hexdigest(),
                                  keys=base64.b64encode(bytes(self.keys)).decode())


class CollectCheckpoints:
    """The checkpoints a run may trust (see the module docstring), and the ones it leaves."""

    def __init__(self, basis: str, files: dict[str, FileCheckpoint] | None = None,
                 evidence: dict[str, EvidenceCheckpoint] | None = None, *,
                 known: WholeFileDigests | None = None) -> None:
        """`known`: whole-file digests known without a read (an evidence file unchanged since its
        checkpoint is then not read to check it)."""
        self.basis = basis
        self.known = known
        self.files = files or {}
        self.evidence = evidence or {}
        self.next: dict[str, FileCheckpoint] = {}
        self.next_evidence: dict[str, EvidenceCheckpoint] = {}
        # evidence files whose key checkpoint can take this run's appends: hashed to their end
        self._growing: dict[str, _GrowingEvidence] = {}
        self._fixed: set[str] = set()  # evidence files whose checkpoint cannot (read only in part)
        self._appended: set[str] = set()

    @classmethod
    def load(cls, path: Path, basis: str, *, known: WholeFileDigests | None = None) -> CollectCheckpoints:
        """The saved checkpoints if they were made on this basis; none otherwise (a missing or
        unreadable file only costs a full read)."""
        data = read_sealed(path)  # a changed byte (a dedup key, a stored quarantine line): none
        if data is None:
            return cls(basis)
        try:
            saved = _CheckpointFile.model_validate_json(data)
        except ValueError:
            return cls(basis)
        if saved.basis != basis:
            return cls(basis)
        return cls(basis, saved.files, saved.evidence, known=known)

    def evidence_keys(self, rel: str, path: Path, parse_keys: Callable[[bytes], bytes | None]) -> list[bytes]:
        """The keys of every whole line of one evidence file: the checkpointed prefix's from the
        checkpoint (when the file still starts with those bytes), the rest parsed by `parse_keys`
        (a line -> its key, or None for a line that is not evidence)."""
        found = self.evidence.get(rel)
        hashed = PrefixHash.resume(path, found.end, found.prefix_hash, known=self.known) if found is not None else None
        if found is not None and hashed is not None:
            start, blob = found.end, bytearray(found.key_bytes())
        else:
            start, blob, hashed = 0, bytearray(), PrefixHash()
        end = start
        for raw in iter_raw_lines(path, start=start, on_chunk=hashed.update):
            if not raw.terminated:
                break
            end = raw.offset + raw.length + 1
            key = parse_keys(raw.data) if raw.data else None
            if key is not None:
                blob += key
        sha = hashed.hexdigest_to(path, end)  # an unterminated tail (a dry run does not repair it) is left out
        if sha is not None:
            self.next_evidence[rel] = EvidenceCheckpoint(end=end, prefix_hash=sha, keys=base64.b64encode(bytes(blob)).decode())
        keys = split_keys(blob)
        if sha is not None and hashed.at == end:
            self._growing[rel] = _GrowingEvidence(hashed, blob)
        else:
            self._fixed.add(rel)
        return keys

    def appended(self, rel: str, lines: list[bytes], keys: list[bytes]) -> None:
        """Lines this run appended to an evidence file (in file order, each with its key): its
        checkpoint then covers them, so the next run does not parse what this one wrote. Had
        another writer appended in between, the next run finds the file's prefix hash different
        and parses it whole."""
        if rel in self._fixed:
            return
        growing = self._growing.get(rel)
        if growing is None:  # a file this run created
            growing = self._growing[rel] = _GrowingEvidence(PrefixHash(), bytearray())
        growing.hashed.update(b"\n".join(lines) + b"\n")
        growing.keys += b"".join(keys)
        self._appended.add(rel)

    def resume(self, rel: str, path: Path, source: str, seen: set[bytes]) -> FileRecorder:
        """A recorder for reading `path`, resumed from its checkpoint when that can be trusted."""
        found = self.files.get(rel)
        if found is not None and found.source == source:
            hashed = PrefixHash.resume(path, found.end, found.prefix_hash)
            if hashed is not None:
                keys = found.key_bytes()
                if len(keys) % KEY_BYTES == 0 and seen.issuperset(split_keys(keys)):
                    return FileRecorder(source, found, hashed)
        return FileRecorder(source, None, PrefixHash())

    def record(self, rel: str, checkpoint: FileCheckpoint | None) -> None:
        if checkpoint is not None:
            self.next[rel] = checkpoint

    def save(self, path: Path) -> None:
        for rel in self._appended:
            self.next_evidence[rel] = self._growing[rel].checkpoint()
        payload: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "basis": self.basis,
            "files": {rel: cp.model_dump(mode="json") for rel, cp in sorted(self.next.items())},
            "evidence": {rel: cp.model_dump(mode="json") for rel, cp in sorted(self.next_evidence.items())},
        }
        write_sealed(path, dumps(payload))
