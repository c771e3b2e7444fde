"""The auditor's memory (`_kb/audit_lessons.jsonl`): one row per block/warn finding and range.
A signature seen in more distinct ranges raises a recurrence finding: info, warn, then block."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel

from audit.findings import Finding, Severity, signature_of
from distill.config import AuditSettings
from distill.jsonl import append_json, iter_json


class Lesson(BaseModel):
    signature: str
    check: str
    title: str
    range: str  # base..head commits: what makes two sightings distinct
    severity: Severity
    ts: str


def recurrence_severity(ranges: int, settings: AuditSettings) -> Severity | None:
    """The severity a signature earns by being seen in `ranges` distinct ranges (this one included)."""
    if ranges >= settings.block_at:
        return Severity.BLOCK
    if ranges >= settings.warn_at:
        return Severity.WARN
    if ranges >= settings.info_at:
        return Severity.INFO
    return None


def earlier_ranges(path: Path) -> dict[str, set[str]]:
    """signature -> the distinct ranges it was recorded in."""
    seen: dict[str, set[str]] = defaultdict(set)
    if path.is_file():
        for row in iter_json(path):
            if isinstance(row, dict) and isinstance(row.get("signature"), str) and isinstance(row.get("range"), str):
                seen[row["signature"]].add(row["range"])
    return seen


def recurrence_findings(findings: Sequence[Finding], range_key: str, seen: dict[str, set[str]],
                        settings: AuditSettings) -> list[Finding]:
    """One finding per recurring signature among `findings`, at the severity its count earns."""
    out: list[Finding] = []
    done: set[str] = set()
    for f in findings:
        if f.signature in done or f.severity is Severity.INFO:
            continue
        done.add(f.signature)
        ranges = seen.get(f.signature, set()) | {range_key}
        f.recurrence = len(ranges) - 1
        level = recurrence_severity(len(ranges), settings)
        if level is None:
            continue
        out.append(Finding(
            check="recurrence", severity=level, title=f"recurring: {f.check} seen in {len(ranges)} distinct ranges",
            claim=f.claim, checked="_kb/audit_lessons.jsonl for the same signature in other ranges",
            found=f"{f.title} — also in {len(ranges) - 1} earlier range(s) "
                  f"(info at {settings.info_at}, warn at {settings.warn_at}, block at {settings.block_at})",
            path=f.path, line=f.line, signature=signature_of("recurrence", f.signature),
        ))
    return out


def record(path: Path, findings: Iterable[Finding], range_key: str, ts: str) -> int:
    """Append one lesson per block/warn finding signature of this range (recurrence rows aside)."""
    rows: list[dict[str, object]] = []
    signatures: set[str] = set()
    for f in findings:
        if f.check == "recurrence" or f.severity is Severity.INFO or f.signature in signatures:
            continue
        signatures.add(f.signature)
        rows.append(Lesson(signature=f.signature, check=f.check, title=f.title, range=range_key,
                           severity=f.severity, ts=ts).model_dump(mode="json"))
    return append_json(path, rows) if rows else 0
