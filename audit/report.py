"""The verdict and its forms: JSON (the model), SARIF 2.1.0 for code-scanning annotations, a
markdown comment body, and the `audits` row distill collects as evidence."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field

from audit.claims import Claim
from audit.findings import Finding, Severity
from audit.testrun import TestRun

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL = "distill audit"
_LEVEL = {Severity.BLOCK: "error", Severity.WARN: "warning", Severity.INFO: "note"}
_AUDIT_SEVERITY = {"block": "critical", "warn": "medium", "pass": "info"}


class AuditReport(BaseModel):
    repo: str
    range: str
    base: str
    head: str
    verdict: str = Field(description="block, warn or pass")
    exit_code: int
    findings: list[Finding]
    claims: list[Claim]
    test_run: TestRun | None = None
    files: list[str]
    notes: list[str] = Field(default_factory=list)
    lessons_written: int = 0
    audit_row_id: str | None = None

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.BLOCK]


def verdict_of(findings: list[Finding]) -> tuple[str, int]:
    """block (exit 1) when any finding blocks; else warn or pass (exit 0)."""
    worst = max((f.severity.rank for f in findings), default=-1)
    if worst == Severity.BLOCK.rank:
        return "block", 1
    return ("warn", 0) if worst == Severity.WARN.rank else ("pass", 0)


def sarif(report: AuditReport, version: str) -> dict[str, Any]:
    """SARIF 2.1.0: one rule per check, one result per finding, located when the finding has a file."""
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for f in report.findings:
        rules.setdefault(f.check, {
            "id": f.check,
            "name": f.check.replace("_", " ").title().replace(" ", ""),
            "shortDescription": {"text": f.checked[:200]},
            "defaultConfiguration": {"level": _LEVEL[f.severity]},
        })
        result: dict[str, Any] = {
            "ruleId": f.check,
            "level": _LEVEL[f.severity],
            "message": {"text": f"{f.title}: {f.found}" + (f" (claim: {f.claim})" if f.claim else "")},
            "partialFingerprints": {"distillSignature/v1": f.signature},
            "properties": {"severity": f.severity.value, "checked": f.checked, "recurrence": f.recurrence},
        }
        if f.path:
            location: dict[str, Any] = {"artifactLocation": {"uri": f.path, "uriBaseId": "SRCROOT"}}
            if f.line:
                location["region"] = {"startLine": f.line}
            result["locations"] = [{"physicalLocation": location}]
        results.append(result)
    ids = list(rules)
    for r in results:
        r["ruleIndex"] = ids.index(r["ruleId"])
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL, "version": version, "rules": list(rules.values())}},
            "versionControlProvenance": [{"repositoryUri": report.repo, "revisionId": report.head}],
            "originalUriBaseIds": {"SRCROOT": {"uri": report.repo.rstrip("/") + "/"}} if report.repo.startswith("file:") else {},
            "invocations": [{"executionSuccessful": True, "exitCode": report.exit_code}],
            "results": results,
            "properties": {"verdict": report.verdict, "range": report.range},
        }],
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: AuditReport) -> str:
    """A PR comment body."""
    counts = {s: sum(f.severity is s for f in report.findings) for s in Severity}
    head = {"block": "Blocked", "warn": "Passed with warnings", "pass": "Passed"}[report.verdict]
    lines = [
        f"## distill audit: {head}",
        "",
        f"Range `{report.range}` · {len(report.files)} files · {len(report.claims)} claims · "
        f"{counts[Severity.BLOCK]} blocking, {counts[Severity.WARN]} warnings, {counts[Severity.INFO]} notes",
        "",
    ]
    if report.findings:
        lines += ["| severity | check | where | claim | found |", "|---|---|---|---|---|"]
        for f in sorted(report.findings, key=lambda f: -f.severity.rank):
            where = f"`{f.path}`" + (f":{f.line}" if f.line else "") if f.path else ""
            lines.append(f"| {f.severity.value} | {f.check} | {_cell(where)} | {_cell(f.claim or '')} | {_cell(f.found)} |")
    else:
        lines.append("No findings: every claim is backed by the change.")
    if report.test_run is not None:
        t = report.test_run
        lines += ["", f"Tests: `{t.command}` exit {t.exit_code}{' (timed out)' if t.timed_out else ''}: {t.closing_line}"]
    for note in report.notes:
        lines.append(f"\n_{note}_")
    return "\n".join(lines) + "\n"


def audits_row(report: AuditReport, ts: str, auditor: str) -> dict[str, Any]:
    """The run as one row of the `audits` stream (collected and scored like the seed's auditor)."""
    run_id = "AUD-" + hashlib.sha256(f"{report.range}\x00{ts}".encode()).hexdigest()[:12]
    worst = next((f for f in sorted(report.findings, key=lambda f: -f.severity.rank)), None)
    return {
        "finding_id": run_id,
        "pr": report.range,
        "check": "claim-auditor",
        "topic": worst.title if worst else "claims backed by the change",
        "severity": _AUDIT_SEVERITY[report.verdict],
        "resolution": "open",  # what became of it is known later, when the change is fixed or merged
        "files": report.files[:50],
        "evidence": markdown(report),
        "auditor_model": auditor,
        "ts": ts,
    }
