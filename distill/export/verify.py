"""Re-read an export as written and check it against the firewall policy.

Two views of every row: the category label it carries, and the category score gave the evidence
revision it came from (scored-runs are the ground truth), so a row forged or relabelled after the
fact is still caught. Each row must also pass its record schema. One pass over the rows it has
not verified before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from distill.export.scored_index import ScoredIndex, scored_categories
from distill.export.verified import LookupLog, VerifiedPrefix, cache_path, save_verified, verification_basis
from distill.firewall import ExportKind, RowCounts, Violation, ViolationCode, row_violations, rows_violations
from distill.hashing import LineEndHash, PrefixHash
from distill.jsonl import json_rows, json_rows_at
from distill.receipts import code_fingerprint
from distill.records import PreferenceSample, RagSample, SftSample
from distill.workspace import Workspace

SCHEMAS: Mapping[ExportKind, type[BaseModel]] = {
    ExportKind.RAG: RagSample,
    ExportKind.SFT: SftSample,
    ExportKind.PREFERENCE: PreferenceSample,
}


def native_path(ws: Workspace, kind: ExportKind | str) -> Path:
    return {"rag": ws.rag_path, "sft": ws.sft_path, "preference": ws.preference_path}[ExportKind(kind).value]


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
    """Every firewall violation in the native export as it is on disk. Rows a clean verification
    already judged are not read again while nothing that decided their verdict has changed
    (distill.export.verified); the rows appended since are, and so are the judged rows whose run
    was scored again."""
    kind = ExportKind(kind)
    index = scored if scored is not None else scored_categories(ws)
    file = native_path(ws, kind)
    cap = max_pairs_per_task if kind is ExportKind.PREFERENCE else None
    store = cache_path(ws, kind)
    basis = verification_basis(kind, code_fingerprint(["distill"]), cap)
    saved = VerifiedPrefix.load(store, basis)
    check = saved.recheck(file, index) if saved is not None else None
    before = check.prefix if check is not None else None
    tail = LineEndHash(check.hasher if check is not None else PrefixHash())
    # a prefix row whose run was scored again since is judged again (its bytes, schema and counts
    # are as verified; only the answer to its lookups changed)
    rescored = [v for line, row in json_rows_at(file, check.rescored, end=check.prefix.end)
                for v in row_violations(kind, row, line=line, scored=index.category)] if check is not None else []
    log = LookupLog(index)
    counts = RowCounts()
    schema: list[Violation] = []

    def junk(line: int, why: str) -> None:
        # a trainer cannot load a dataset with a line that is not a row
        schema.append(Violation(export=kind, code=ViolationCode.SCHEMA, line=line, detail=why))

    rows = json_rows(file, junk, start=before.end if before else 0, lines_before=before.lines if before else 0,
                     on_chunk=tail)

    def checked() -> Iterator[tuple[int, dict[str, Any]]]:
        for line, row, problem in schema_violations(kind, rows):
            if problem is not None:
                schema.append(problem)
            log.line = line
            yield line, row

    policy = rows_violations(kind, checked(), scored=log.category, max_pairs_per_task=cap, counts=counts,
                             prior=before.prior() if before is not None else None)
    violations = schema + rescored + policy
    if not violations and file.exists():
        save_verified(store, basis=basis, file=file, tail=tail, lines=(before.lines if before else 0) + tail.newlines,
                      before=before, log=log, ids=iter(counts.ids), tasks=iter(counts.per_task.items()))
    return violations
