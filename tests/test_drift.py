"""compute_drift: a pure function of two RunSummaries."""

from __future__ import annotations

from datetime import UTC, datetime

from distill.drift import compute_drift
from distill.records.receipts import DeterminismFinding, FileDigest, GitInfo, RunSummary, StageSummary, run_hash
from distill.records.stage import Counts

T = datetime(2026, 1, 1, tzinfo=UTC)
H = "0" * 64


def counts(written: int = 100, quarantined: int = 0, cats: dict[str, int] | None = None,
           reasons: dict[str, int] | None = None) -> Counts:
    return Counts(
        rows_in=written + quarantined,
        written=written,
        quarantined=quarantined,
        by_category=cats or {},
        by_reason=reasons or {},
    )


def stage(name: str, c: Counts, *, inputs: str = "i", outputs: str = "o", passed: bool = True,
          status: str = "ran", codes: list[str] | None = None, by_source: dict[str, Counts] | None = None,
          determinism: list[DeterminismFinding] | None = None) -> StageSummary:
    return StageSummary(
        stage=name,
        status=status,  # type: ignore[arg-type]
        passed=passed,
        receipt=f"reports/RUN/{name}.json",
        content_hash=f"{name}-{inputs}-{outputs}-{c.written}-{c.quarantined}-{sorted(c.by_category.items())}",
        inputs_hash=inputs,
        outputs_hash=outputs,
        config_hash="cfg",
        code_version="distill 0.1.0",
        code_fingerprint="fp",
        outputs=[FileDigest(path=f"exports/{name}.jsonl", bytes=1, sha256=(outputs * 64)[:64] if outputs in "0123456789abcdef" else H)],
        totals=c,
        output_categories=c.by_category,  # the tests state output categories through counts(cats=...)
        by_source=by_source or {},
        error_codes=codes or [],
        errors=[f"{x}: detail" for x in (codes or [])],
        determinism=determinism or [],
    )


def summary(run_id: str, stages: list[StageSummary]) -> RunSummary:
    return RunSummary(
        run_id=run_id,
        root="/w",
        started_at=T,
        finished_at=T,
        duration_s=0,
        git=GitInfo(),
        full_config_hash=H,
        code_version="distill 0.1.0",
        stages=stages,
        overall_passed=all(s.passed is not False for s in stages),
        run_hash=run_hash([(s.stage, s.content_hash) for s in stages]),
    )


def test_first_run_is_ok() -> None:
    d = compute_drift(None, summary("r1", [stage("score", counts())]), threshold_pct=20)
    assert d.severity == "ok" and d.previous_run_id is None and not d.count_changes


def test_identical_runs_are_ok_with_no_changes() -> None:
    s = [stage("score", counts(cats={"accepted": 60, "rejected": 40}))]
    d = compute_drift(summary("r1", s), summary("r2", s), threshold_pct=20)
    assert d.severity == "ok" and not d.flags and not d.count_changes and not d.changed_stages
    assert d.previous_run_id == "r1"


def test_category_change_over_threshold_warns() -> None:
    prev = summary("r1", [stage("score", counts(cats={"accepted": 60, "rejected": 40}))])
    cur = summary("r2", [stage("score", counts(cats={"accepted": 45, "rejected": 55}), inputs="j", outputs="p")])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "warn"
    flagged = {(c.scope, c.key) for c in d.count_changes if c.over_threshold}
    assert flagged == {("category", "accepted"), ("category", "rejected")}
    assert [c.stage for c in d.changed_stages] == ["score"]


def test_small_change_is_listed_but_not_flagged_and_threshold_is_configurable() -> None:
    prev = summary("r1", [stage("score", counts(cats={"accepted": 100}))])
    cur = summary("r2", [stage("score", counts(written=110, cats={"accepted": 110}), inputs="j", outputs="p")])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "ok"
    ch = next(c for c in d.count_changes if c.scope == "category")
    assert (ch.previous, ch.current, ch.pct_change, ch.over_threshold) == (100, 110, 10.0, False)
    assert compute_drift(prev, cur, threshold_pct=5).severity == "warn"


def test_per_source_change_warns() -> None:
    prev = summary("r1", [stage("collect", counts(), by_source={"audits": counts(50), "scrum": counts(50)})])
    cur = summary("r2", [stage("collect", counts(), inputs="j", by_source={"audits": counts(80), "scrum": counts(20)})])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "warn"
    assert {c.key for c in d.count_changes if c.scope == "source" and c.over_threshold} == {"audits", "scrum"}


def test_new_quarantine_reason_and_new_error_code_warn() -> None:
    prev = summary("r1", [stage("collect", counts(100, 5, reasons={"malformed_json": 5}))])
    cur = summary("r2", [stage("collect", counts(100, 5, reasons={"malformed_json": 4, "torn_line": 1}), inputs="j", passed=False, codes=["output_torn"])])
    d = compute_drift(prev, cur, threshold_pct=50)
    kinds = {f.kind for f in d.flags}
    assert {"new_quarantine_reason", "new_error_class", "stage_regressed"} <= kinds
    assert d.severity == "warn"


def test_firewall_category_in_sft_alerts() -> None:
    prev = summary("r1", [stage("export-sft", counts(cats={"accepted": 10}))])
    cur = summary("r2", [stage("export-sft", counts(cats={"accepted": 10, "needs_human_review": 1}), inputs="j", outputs="p")])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "alert"
    assert any(f.kind == "firewall_category" and f.stage == "export-sft" for f in d.flags)
    # needs_human_review is allowed in RAG; rejected is not
    ok = summary("r3", [stage("export-rag", counts(cats={"needs_human_review": 3}))])
    assert not any(f.kind == "firewall_category" for f in compute_drift(None, ok, threshold_pct=20).flags)
    bad = summary("r4", [stage("export-rag", counts(cats={"rejected": 1}))])
    assert compute_drift(None, bad, threshold_pct=20).severity == "alert"


def test_firewall_validation_error_alerts() -> None:
    cur = summary("r2", [stage("export-sft", counts(), passed=False, codes=["firewall_sft_category"])])
    assert compute_drift(None, cur, threshold_pct=20).severity == "alert"


def test_same_inputs_different_outputs_is_a_deterministic_violation() -> None:
    prev = summary("r1", [stage("export-sft", counts(), inputs="i", outputs="a")])
    cur = summary("r2", [stage("export-sft", counts(), inputs="i", outputs="b")])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "alert"
    (v,) = d.deterministic_violation
    assert v.stage == "export-sft" and v.kind == "rerun_output_differs" and v.reference_run_id == "RUN"
    assert v.expected_sha256 != v.found_sha256
    # different inputs: a changed output is expected, not a violation
    moved = summary("r3", [stage("export-sft", counts(), inputs="j", outputs="b")])
    assert compute_drift(prev, moved, threshold_pct=20).deterministic_violation == []


def test_receipt_carried_findings_surface_as_violations() -> None:
    finding = DeterminismFinding(
        stage="export-rag", kind="output_modified", path="exports/rag/playbooks.jsonl",
        expected_sha256="1" * 64, found_sha256="2" * 64, reference_run_id="r1", detail="edited outside distill run",
    )
    s = [stage("export-rag", counts())]
    cur = summary("r2", [stage("export-rag", counts(), determinism=[finding])])
    d = compute_drift(summary("r1", s), cur, threshold_pct=20)
    assert d.severity == "alert" and d.deterministic_violation == [finding]


def test_not_run_stages_are_not_compared() -> None:
    prev = summary("r1", [stage("score", counts())])
    cur = summary("r2", [StageSummary(stage="score", status="not_run")])
    d = compute_drift(prev, cur, threshold_pct=20)
    assert d.severity == "ok" and not d.count_changes
