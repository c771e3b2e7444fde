"""Drift between two runs: a pure function of the previous and current RunSummary.

What moves the severity:
- warn: a per-stage/per-source/per-category count changes by more than the threshold; a
  quarantine reason, validation error code or exception class appears that the previous run
  did not have; a stage that passed before fails now.
- alert: a firewall category shows up in an export (rejected or needs_human_review in SFT,
  rejected in RAG) or a firewall validation error; a determinism violation (same inputs,
  config and code as a trusted receipt, different output).
Every count change is listed, flagged or not, so a small change is still visible.
"""

from __future__ import annotations

from collections.abc import Iterable

from distill.firewall import categories_never_in
from distill.records.receipts import (
    CountChange,
    DeterminismFinding,
    DriftFlag,
    DriftReport,
    RunSummary,
    Severity,
    StageChange,
    StageSummary,
)
from distill.records.stage import Counts

FIREWALL_CODE_PREFIX = "firewall"
"""Validation error codes of firewall violations (distill.firewall.Violation.error_code)."""


def pct_change(previous: int, current: int) -> float | None:
    if previous == 0:
        return None
    return round((current - previous) * 100.0 / previous, 2)


def _over(previous: int, current: int, threshold_pct: float) -> bool:
    if previous == current:
        return False
    if previous == 0:
        return True  # appeared from nothing
    return abs(current - previous) * 100.0 / previous > threshold_pct


def _metrics(c: Counts) -> dict[str, int]:
    """The numbers compared per scope. `out` = written + deduped: what the output holds."""
    return {
        "rows_in": c.rows_in,
        "out": c.written + c.deduped,
        "quarantined": c.quarantined,
        "skipped": c.skipped,
    }


def _count_changes(stage: str, prev: StageSummary, cur: StageSummary, threshold_pct: float) -> list[CountChange]:
    changes: list[CountChange] = []

    def add(scope: str, key: str, metric: str, p: int, c: int) -> None:
        if p != c:
            changes.append(
                CountChange(
                    stage=stage,
                    scope=scope,  # type: ignore[arg-type]
                    key=key,
                    metric=metric,
                    previous=p,
                    current=c,
                    pct_change=pct_change(p, c),
                    over_threshold=_over(p, c, threshold_pct),
                )
            )

    for metric, value in _metrics(cur.totals).items():
        add("total", "*", metric, _metrics(prev.totals)[metric], value)
    for source in sorted(set(prev.by_source) | set(cur.by_source)):
        p = _metrics(prev.by_source.get(source, Counts()))
        c = _metrics(cur.by_source.get(source, Counts()))
        for metric in p:
            add("source", source, metric, p[metric], c[metric])
    for category in sorted(set(prev.output_categories) | set(cur.output_categories)):
        add("category", category, "rows", prev.output_categories.get(category, 0), cur.output_categories.get(category, 0))
    for reason in sorted(set(prev.totals.by_reason) | set(cur.totals.by_reason)):
        add("reason", reason, "rows", prev.totals.by_reason.get(reason, 0), cur.totals.by_reason.get(reason, 0))
    return changes


def _firewall_flags(cur: StageSummary) -> list[DriftFlag]:
    flags: list[DriftFlag] = []
    for category in sorted(categories_never_in(cur.stage)):
        n = cur.output_categories.get(category, 0)
        if n:
            flags.append(
                DriftFlag(
                    severity="alert",
                    kind="firewall_category",
                    stage=cur.stage,
                    message=f"{n} {category} row(s) in the {cur.stage} output",
                )
            )
    fw_codes = [c for c in cur.error_codes if c.startswith(FIREWALL_CODE_PREFIX)]
    if fw_codes:
        flags.append(
            DriftFlag(
                severity="alert",
                kind="firewall_validation",
                stage=cur.stage,
                message=f"{cur.stage} output breaks the firewall: {', '.join(fw_codes)}",
            )
        )
    return flags


def _summary_violations(prev: StageSummary, cur: StageSummary) -> list[DeterminismFinding]:
    """Same inputs/config/code in both runs' stage lines, but different outputs (not after a
    `distill export` with its own flags wrote them between the runs)."""
    if prev.passed is not True or cur.status not in ("ran", "skipped") or cur.outputs_by_command:
        return []
    same_basis = (
        prev.inputs_hash is not None
        and prev.inputs_hash == cur.inputs_hash
        and prev.config_hash == cur.config_hash
        and prev.code_version == cur.code_version
        and prev.code_fingerprint == cur.code_fingerprint
    )
    if not same_basis or prev.outputs_hash == cur.outputs_hash:
        return []
    before = {d.path: d.sha256 for d in prev.outputs}
    after = {d.path: d.sha256 for d in cur.outputs}
    findings = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path):
            findings.append(
                DeterminismFinding(
                    stage=cur.stage,
                    kind="rerun_output_differs",
                    path=path,
                    expected_sha256=before.get(path),
                    found_sha256=after.get(path),
                    reference_run_id=_run_of(prev),
                    detail="same inputs, config and code as the previous run, different output",
                )
            )
    return findings


def _run_of(stage: StageSummary) -> str:
    # receipts live at reports/<run_id>/<stage>.json
    if stage.receipt:
        parts = stage.receipt.split("/")
        if len(parts) >= 2:
            return parts[-2]
    return stage.reused_from or "previous"


def _dedup(findings: Iterable[DeterminismFinding]) -> list[DeterminismFinding]:
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for f in findings:
        key = (f.stage, f.kind, f.path)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def compute_drift(previous: RunSummary | None, current: RunSummary, *, threshold_pct: float) -> DriftReport:
    """Compare the current run with the previous one (None for a first run)."""
    flags: list[DriftFlag] = []
    changes: list[CountChange] = []
    stage_changes: list[StageChange] = []
    violations: list[DeterminismFinding] = []

    for cur in current.stages:
        flags.extend(_firewall_flags(cur))
        violations.extend(cur.determinism)
        prev = previous.stage(cur.stage) if previous is not None else None
        if cur.status in ("not_run", "unavailable"):
            continue
        if prev is None or prev.status in ("not_run", "unavailable"):
            if previous is not None:
                stage_changes.append(StageChange(stage=cur.stage, previous_content_hash=None, current_content_hash=cur.content_hash, current_status=cur.status))
            continue
        if prev.content_hash != cur.content_hash:
            stage_changes.append(
                StageChange(
                    stage=cur.stage,
                    previous_content_hash=prev.content_hash,
                    current_content_hash=cur.content_hash,
                    current_status=cur.status,
                )
            )
        stage_changes_counts = _count_changes(cur.stage, prev, cur, threshold_pct)
        changes.extend(stage_changes_counts)
        for ch in stage_changes_counts:
            if ch.over_threshold and ch.scope != "reason":
                where = "total" if ch.scope == "total" else f"{ch.scope} {ch.key}"
                pct = "new" if ch.pct_change is None else f"{ch.pct_change:+.1f}%"
                flags.append(
                    DriftFlag(
                        severity="warn",
                        kind="count_change",
                        stage=cur.stage,
                        message=f"{cur.stage} {where} {ch.metric}: {ch.previous} -> {ch.current} ({pct})",
                    )
                )
        for reason in sorted(set(cur.totals.by_reason) - set(prev.totals.by_reason)):
            flags.append(
                DriftFlag(
                    severity="warn",
                    kind="new_quarantine_reason",
                    stage=cur.stage,
                    message=f"{cur.stage}: new quarantine reason {reason!r} ({cur.totals.by_reason[reason]} rows)",
                )
            )
        for code in sorted(set(cur.error_codes) - set(prev.error_codes)):
            flags.append(DriftFlag(severity="warn", kind="new_error_class", stage=cur.stage, message=f"{cur.stage}: new validation error {code!r}"))
        cur_exc = _exc_class(cur.error)
        if cur_exc and cur_exc != _exc_class(prev.error):
            flags.append(DriftFlag(severity="warn", kind="new_error_class", stage=cur.stage, message=f"{cur.stage}: raised {cur_exc}"))
        if prev.passed is True and cur.passed is False:
            flags.append(DriftFlag(severity="warn", kind="stage_regressed", stage=cur.stage, message=f"{cur.stage} passed in the previous run and fails now"))
        violations.extend(_summary_violations(prev, cur))

    violations = _dedup(violations)
    for v in violations:
        flags.append(
            DriftFlag(
                severity="alert",
                kind="deterministic_violation",
                stage=v.stage,
                message=f"{v.stage}: {v.kind} {v.path or ''} ({v.detail}; reference run {v.reference_run_id})".replace("  ", " "),
            )
        )
    severity: Severity = "ok"
    if any(f.severity == "alert" for f in flags):
        severity = "alert"
    elif flags:
        severity = "warn"
    return DriftReport(
        run_id=current.run_id,
        previous_run_id=previous.run_id if previous is not None else None,
        threshold_pct=threshold_pct,
        severity=severity,
        flags=flags,
        count_changes=changes,
        changed_stages=stage_changes,
        deterministic_violation=violations,
    )


def _exc_class(error: str | None) -> str | None:
    if not error:
        return None
    return error.split(":", 1)[0].strip() or None
