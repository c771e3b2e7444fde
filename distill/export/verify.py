"""Re-read an export as written and check it against the firewall policy.

Two views of every row: the category label it carries, and the category score gave the evidence
revision it came from (scored-runs are the ground truth), so a row forged or relabelled after the
fact is still caught. Each row must also pass its record schema. One pass over the file.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from distill.firewall import ExportKind, Violation, ViolationCode, rows_violations
from distill.jsonl import json_rows
from distill.records import PreferenceSample, RagSample, SftSample
from distill.workspace import Workspace, iter_partition_files

SCHEMAS: Mapping[ExportKind, type[BaseModel]] = {
    ExportKind.RAG: RagSample,
    ExportKind.SFT: SftSample,
    ExportKind.PREFERENCE: PreferenceSample,
}


def native_path(ws: Workspace, kind: ExportKind | str) -> Path:
    return {"rag": ws.rag_path, "sft": ws.sft_path, "preference": ws.preference_path}[ExportKind(kind).value]


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class _SortedCodes:
    """128-bit key digests, sorted, with a small category code each: about 26 bytes per scored
    row where a dict of string tuples took ~600 (646 MiB at 1M rows), so verifying an export
    stays in bounded memory as the workspace grows. Equal keys keep their insertion order."""

    def __init__(self) -> None:
        self._keys = bytearray()
        self._codes = array("I")
        self.keys: np.ndarray | None = None
        self.codes: np.ndarray | None = None

    def add(self, key: bytes, code: int) -> None:
        self._keys += key
        self._codes.append(code)

    def freeze(self) -> None:
        keys = np.frombuffer(bytes(self._keys), dtype="S16")
        order = np.argsort(keys, kind="stable")
        self.keys, self.codes = keys[order], np.frombuffer(self._codes, dtype=np.uint32)[order]
        self._keys, self._codes = bytearray(), array("I")

    def span(self, key: bytes) -> np.ndarray:
        """The codes stored under `key`, in insertion order."""
        assert self.keys is not None and self.codes is not None
        probe = np.array(key, dtype="S16")
        lo = int(np.searchsorted(self.keys, probe, side="left"))
        hi = int(np.searchsorted(self.keys, probe, side="right"))
        return self.codes[lo:hi]


class ScoredIndex:
    """Categories score gave, per evidence revision (run id + sig_hash) and per run id.

    A source row edited in place yields a second evidence revision of the same run; each export
    row names its revision through provenance.sig_hash, so it is judged by that revision's score
    (the last scored line for that revision, as a mapping would keep).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self._by_version = _SortedCodes()
        self._by_run = _SortedCodes()

    def add(self, run_id: str, sig: str | None, category: str) -> None:
        code = self._code.setdefault(category, len(self._code))
        if code == len(self.names):
            self.names.append(category)
        self._by_run.add(_digest(run_id), code)
        if sig is not None:
            self._by_version.add(_digest(run_id, sig), code)

    def freeze(self) -> ScoredIndex:
        self._by_version.freeze()
        self._by_run.freeze()
        return self

    def category(self, run_id: Any, sig: Any) -> str | None:
        if not isinstance(run_id, str):
            return None
        if isinstance(sig, str):
            found = self._by_version.span(_digest(run_id, sig))
            if len(found):
                return self.names[int(found[-1])]
        codes = set(self._by_run.span(_digest(run_id)).tolist())
        return self.names[codes.pop()] if len(codes) == 1 else None


def scored_categories(ws: Workspace) -> ScoredIndex:
    """The scored-runs partitions as the firewall's ground truth."""
    index = ScoredIndex()
    for path in iter_partition_files(ws.scored_dir):
        for _, row in json_rows(path):
            rid, cat = row.get("evidence_run_id"), row.get("category")
            prov = row.get("provenance")
            sig = prov.get("sig_hash") if isinstance(prov, dict) else None
            if isinstance(rid, str) and isinstance(cat, str):
                index.add(rid, sig if isinstance(sig, str) else None, cat)
    return index.freeze()


def schema_violations(kind: ExportKind, rows: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any], Violation | None]]:
    """Each row with the schema violation it has, if any."""
    model = SCHEMAS[kind]
    for line, row in rows:
        problem = None
        try:
            model.model_validate(row)
        except ValidationError as exc:
            problem = Violation(
                export=kind, code=ViolationCode.SCHEMA, line=line, record_id=str(row.get("id")),
                detail=f"fails the {model.__name__} schema: {exc.errors()[0]['msg']}",
            )
        yield line, row, problem


def verify_export(
    ws: Workspace, kind: ExportKind | str, *, scored: ScoredIndex | None = None, max_pairs_per_task: int | None = None
) -> list[Violation]:
    """Every firewall violation in the native export as it is on disk."""
    kind = ExportKind(kind)
    index = scored if scored is not None else scored_categories(ws)
    schema: list[Violation] = []

    def junk(line: int, why: str) -> None:
        # a trainer cannot load a dataset with a line that is not a row
        schema.append(Violation(export=kind, code=ViolationCode.SCHEMA, line=line, detail=why))

    def checked() -> Iterator[tuple[int, dict[str, Any]]]:
        for line, row, problem in schema_violations(kind, json_rows(native_path(ws, kind), junk)):
            if problem is not None:
                schema.append(problem)
            yield line, row

    policy = rows_violations(
        kind, checked(), scored=index.category,
        max_pairs_per_task=max_pairs_per_task if kind is ExportKind.PREFERENCE else None,
    )
    return schema + policy
