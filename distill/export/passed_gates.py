"""Gate inputs that passed the firewall, remembered by content, so a row gated again is not rescanned.

The preference export pairs rows across the whole input, so every run reads every row, and its
firewall scan was the largest part of a run after a small append. The gates are a pure function
of a row's GateInput and of the export basis (the `distill` code, the [export] settings, the
repository tree, the benchmark files, the secret scanner's version: `checkpoints.export_basis`),
so an input that passed under one basis passes again under the same basis. Kept: the 128-bit
digest of each input that passed in the last run (a row that failed is checked again, so the
reasons come from the gates themselves). A different basis, or an unreadable file, means none are
known; `distill run --force` deletes the file (`Stage.caches`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distill.export.gates import Firewall, GateFailure, GateInput
from distill.export.scored_index import key_digest, write_cache
from distill.jsonl import loads
from distill.sorted_search import search_sorted

PASSED_GATES_VERSION = 1


def input_digest(item: GateInput) -> bytes:
    """128-bit digest of every field of the input: each field's string count, then its strings, all
    length-prefixed (no two inputs share an encoding)."""
    parts: list[str] = []
    for field in (item.texts, item.cited_files, item.scan_only):
        parts.append(str(len(field)))
        parts.extend(field)
    return key_digest(*parts)


class PassedGates:
    """A firewall in front of the firewall: inputs known to pass are not checked again."""

    def __init__(self, path: Path, basis: str, firewall: Firewall, *, writable: bool = True) -> None:
        self.path = path
        self.basis = basis
        self.firewall = firewall
        self.writable = writable
        self.known = _load(path, basis)
        self._passed = bytearray()  # every input that passed this run, known before or not (16 bytes each)
        self.checked = 0  # inputs the gates had to check (not known to pass)
        self.seen = 0  # inputs asked about

    def check(self, items: Sequence[GateInput]) -> list[GateFailure | None]:
        """The firewall's verdicts, without running it for inputs known to pass."""
        digests = [input_digest(item) for item in items]
        self.seen += len(items)
        known = self._known(digests)
        unknown = [i for i, k in enumerate(known) if not k]
        verdicts: list[GateFailure | None] = [None] * len(items)
        if unknown:
            self.checked += len(unknown)
            for i, verdict in zip(unknown, self.firewall.check([items[i] for i in unknown]), strict=True):
                verdicts[i] = verdict
        for digest, verdict in zip(digests, verdicts, strict=True):
            if verdict is None:
                self._passed += digest
        return verdicts

    def passed_before(self, digests: list[bytes]) -> None:
        """Inputs an export checkpoint of this basis says passed: kept for the next run as if
        checked now (so a partition that loses its checkpoint is still not rescanned)."""
        self._passed += b"".join(digests)

    def _known(self, digests: list[bytes]) -> list[bool]:
        if not len(self.known) or not digests:
            return [False] * len(digests)
        probe = np.array(digests, dtype="S16")
        at = np.minimum(search_sorted(self.known, probe), len(self.known) - 1)
        return (self.known[at] == probe).tolist()

    def save(self) -> None:
        """Keep the inputs that passed this run (only those: the file never outgrows the input)."""
        if not self.writable:
            return
        passed = np.unique(np.frombuffer(bytes(self._passed), dtype="S16"))
        write_cache(self.path, {"version": PASSED_GATES_VERSION, "basis": self.basis}, passed=passed)


def _load(path: Path, basis: str) -> np.ndarray:
    """The sorted digests saved under `basis`; none when the file is missing, damaged or of another basis."""
    empty = np.zeros(0, dtype="S16")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = loads(data["meta"].tobytes())
            if not isinstance(meta, dict) or meta.get("version") != PASSED_GATES_VERSION or meta.get("basis") != basis:
                return empty
            passed = data["passed"]
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return empty
    if passed.dtype != np.dtype("S16") or passed.ndim != 1 or bool(np.any(passed[1:] < passed[:-1])):
        return empty  # not what save() writes: trust none of it
    return passed
