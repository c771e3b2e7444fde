"""Re-read an export as written and check it against the firewall policy.

Two views of every row: the category label it carries, and the category score gave the evidence
revision it came from (scored-runs are the ground truth), so a row forged or relabelled after the
fact is still caught. Each row must also pass its record schema. One pass over the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from distill.firewall import ExportKind, Violation, ViolationCode, rows_violations
from distill.jsonl import iter_raw_lines, loads
from distill.records import PreferenceSample, RagSample, SftSample
from distill.workspace import Workspace, iter_partition_files

SCHEMAS: Mapping[ExportKind, type[BaseModel]] = {
    ExportKind.RAG: RagSample,
    ExportKind.SFT: SftSample,
    ExportKind.PREFERENCE: PreferenceSample,
}


def native_path(ws: Workspace, kind: ExportKind | str) -> Path:
    return {"rag": ws.rag_path, "sft": ws.sft_path, "preference": ws.preference_path}[ExportKind(kind).value]


def json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every complete JSON-object line of a file."""
    if not path.exists():
        return
    for raw in iter_raw_lines(path):
        if raw.terminated and raw.data and raw.data.strip():
            try:
                value = loads(raw.data)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield raw.number, value


@dataclass
class ScoredIndex:
    """Categories score gave, per evidence revision (run id + sig_hash) and per run id.

    A source row edited in place yields a second evidence revision of the same run; each export
    row names its revision through provenance.sig_hash, so it is judged by that revision's score.
    """

    by_version: dict[tuple[str, str], str]
    by_run: dict[str, set[str]]

    def category(self, run_id: Any, sig: Any) -> str | None:
        if not isinstance(run_id, str):
            return None
        if isinstance(sig, str) and (run_id, sig) in self.by_version:
            return self.by_version[(run_id, sig)]
        cats = self.by_run.get(run_id)
        return next(iter(cats)) if cats and len(cats) == 1 else None


def scored_categories(ws: Workspace) -> ScoredIndex:
    """The scored-runs partitions as the firewall's ground truth."""
    by_version: dict[tuple[str, str], str] = {}
    by_run: dict[str, set[str]] = {}
    for path in iter_partition_files(ws.scored_dir):
        for _, row in json_rows(path):
            rid, cat = row.get("evidence_run_id"), row.get("category")
            prov = row.get("provenance")
            sig = prov.get("sig_hash") if isinstance(prov, dict) else None
            if isinstance(rid, str) and isinstance(cat, str):
                by_run.setdefault(rid, set()).add(cat)
                if isinstance(sig, str):
                    by_version[(rid, sig)] = cat
    return ScoredIndex(by_version, by_run)


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

    def checked() -> Iterator[tuple[int, dict[str, Any]]]:
        for line, row, problem in schema_violations(kind, json_rows(native_path(ws, kind))):
            if problem is not None:
                schema.append(problem)
            yield line, row

    policy = rows_violations(
        kind, checked(), scored=index.category,
        max_pairs_per_task=max_pairs_per_task if kind is ExportKind.PREFERENCE else None,
    )
    return schema + policy
