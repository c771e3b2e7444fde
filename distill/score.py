"""`distill score`: evidence -> ScoredRun v1 in the mirror partition under ROOT/scored-runs.

Scored runs are a derived view: a pure function of the evidence and the scorer version. Each
partition file is recomputed and replaced atomically only when its bytes change, so a second
run over unchanged evidence writes nothing and leaves every file byte-identical, while a new
verdict-bearing parent correctly re-scores the extraction rows that join to it.

Two passes over the evidence: the first scores class A/B rows and indexes them by task_id as
potential parents; the second joins class C rows to their parent and writes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from distill import __version__
from distill.config import Settings
from distill.jsonl import dumps, iter_raw_lines, write_if_changed
from distill.receipts import count_categories
from distill.records.receipts import FileDigest
from distill.records import Category, EvidenceRecord, QuarantineReason, QuarantineRecord, ScoreClass, ScoredRun, SourceRef
from distill.records.stage import StageReport
from distill.redact import redact_excerpts
from distill.score_rules import SCORER_VERSION, ParentIndex, ParentRun, Verdict, score_evidence
from distill.stage import Stage, existing
from distill.workspace import Workspace, iter_partition_files

STAGE = "score"


def scorer_version(settings: Settings) -> str:
    """The rules' own version, unless the workspace pins another one ([score] scorer_version)."""
    return settings.score.scorer_version or SCORER_VERSION


def _read_evidence(path: Path, ws: Workspace, problems: list[QuarantineRecord]) -> list[EvidenceRecord]:
    """One partition file's evidence; lines that are not valid evidence become quarantine rows."""
    rows: list[EvidenceRecord] = []
    rel = ws.relative(path)
    for raw in iter_raw_lines(path):
        if raw.data is not None and not raw.data.strip():
            continue
        ref = SourceRef(source_file=rel, line_offset=raw.offset, line_number=raw.number)
        if not raw.terminated:
            problems.append(_problem(QuarantineReason.TORN_LINE, "unterminated last line in evidence", ref, raw.data))
            continue
        try:
            rows.append(EvidenceRecord.model_validate_json(raw.data or b""))
        except ValueError as exc:
            problems.append(_problem(QuarantineReason.SCHEMA_VIOLATION, f"not EvidenceRecord v1: {str(exc)[:200]}", ref, raw.data))
    return rows


def _problem(reason: QuarantineReason, error: str, ref: SourceRef, data: bytes | None) -> QuarantineRecord:
    excerpt = (data or b"")[:800].decode("utf-8", errors="replace")[:200] or None
    return QuarantineRecord(stage=STAGE, reason=reason, errors=[error], source_ref=ref, excerpt=excerpt)


def collect_parents(ws: Workspace, settings: Settings) -> dict[str, list[ParentRun]]:
    """Pass 1: every verdict-bearing (class A/B) run with a definite category, by task_id."""
    parents: dict[str, list[ParentRun]] = defaultdict(list)
    ignored: list[QuarantineRecord] = []
    for path in iter_partition_files(ws.evidence_dir):
        for ev in _read_evidence(path, ws, ignored):
            if ev.score_class is ScoreClass.EXTRACTION:
                continue
            verdict = score_evidence(ev, settings.score)
            if verdict.category is Category.NEEDS_HUMAN_REVIEW:
                continue
            parents[ev.task_id].append(
                ParentRun(run_id=ev.run_id, task_id=ev.task_id, category=verdict.category, created_at=ev.created_at)
            )
    return parents


def score_one(ev: EvidenceRecord, parents: dict[str, ParentIndex], settings: Settings) -> ScoredRun:
    verdict: Verdict = score_evidence(ev, settings.score)
    joined: str | None = None
    if ev.score_class is ScoreClass.EXTRACTION:
        index = parents.get(ev.task_id)
        joined_verdict = index.join(ev) if index is not None else None
        if joined_verdict is not None:
            verdict = joined_verdict
            joined = joined_verdict.parent_run_id
    return ScoredRun(
        evidence_run_id=ev.run_id,
        task_id=ev.task_id,
        source=ev.source,
        category=verdict.category,
        reasons=list(verdict.reasons),
        score_class=ev.score_class,
        scorer_version=scorer_version(settings),
        joined_parent_run_id=joined,
        created_at=ev.created_at,
        provenance=ev.provenance,
    )


def mirror_path(ws: Workspace, evidence_file: Path) -> Path:
    return ws.scored_dir / evidence_file.relative_to(ws.evidence_dir)


def run_score(ws: Workspace, settings: Settings, *, dry_run: bool = False) -> StageReport:
    """Score every evidence row; returns counts with the category distribution per source."""
    report = StageReport(stage=STAGE, dry_run=dry_run)
    parents = {task: ParentIndex(runs) for task, runs in collect_parents(ws, settings).items()}
    problems: list[QuarantineRecord] = []
    evidence_files = iter_partition_files(ws.evidence_dir)
    for path in evidence_files:
        before = len(problems)
        rows = _read_evidence(path, ws, problems)
        source = path.stem
        counts = report.source(source)
        for problem in problems[before:]:
            counts.bump("quarantined", reason=problem.reason.value)
        target = mirror_path(ws, path)
        before = target.read_bytes() if target.exists() else None
        # only newline-terminated lines count as present (a torn tail is not a scored row)
        existing = set((before or b"").split(b"\n")[:-1])
        scored = [score_one(ev, parents, settings) for ev in rows]
        lines = [dumps(run.to_json_dict()) for run in scored]
        for run, line in zip(scored, lines, strict=True):
            counts.bump("deduped" if line in existing else "written", category=run.category.value)
        payload = b"".join(line + b"\n" for line in lines)
        if not dry_run:
            write_if_changed(target, payload, current=before)
    if not dry_run:
        _remove_orphans(ws, {mirror_path(ws, p) for p in evidence_files})
        quarantine_path = ws.quarantine_path(STAGE)
        payload = b"".join(dumps(p.to_json_dict()) + b"\n" for p in redact_excerpts(problems))
        write_if_changed(quarantine_path, payload)
        report.outputs.append(ws.relative(quarantine_path))
    report.inputs = [ws.relative(p) for p in evidence_files]
    report.outputs = [ws.relative(p) for p in iter_partition_files(ws.scored_dir)] + report.outputs
    report.notes.append(f"scorer_version={scorer_version(settings)}")
    return report.finalize()


def _remove_orphans(ws: Workspace, keep: set[Path]) -> None:
    """Scored files whose evidence partition is gone would be stale data: remove them."""
    for path in iter_partition_files(ws.scored_dir):
        if path not in keep:
            path.unlink()


class ScoreStage(Stage):
    """Evidence -> scored runs (mirror partitions) + the score quarantine."""

    name = STAGE
    after = ("collect",)
    config_sections = ("score",)

    def version(self, settings: Settings) -> str:
        return f"distill {__version__}; scorer {scorer_version(settings)}"

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.evidence_dir)

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return iter_partition_files(ws.scored_dir) + existing(ws.quarantine_path(STAGE))

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        return run_score(ws, settings)

    def output_categories(self, ws: Workspace, outputs: list[FileDigest]) -> dict[str, int]:
        return count_categories(ws, outputs, "category", under="scored-runs/")
