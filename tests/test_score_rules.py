"""Every scoring rule in distill.score_rules, including the class C parent join."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.config import ScoreSettings
from distill.records import Category, EvidenceRecord, ModelRole, Provenance, ScoreClass
from distill.jsonl import dumps
from distill.score import TaskParents, join_choice, joined_verdict
from distill.score_checkpoints import ParentEntry, PartitionCheckpoint
from distill.score_rules import (
    EXTRACTION_REASON,
    SCORER_VERSION,
    JoinKey,
    ParentRun,
    Verdict,
    join_extraction,
    score_evidence,
)

A, P, R, H = (
    Category.ACCEPTED,
    Category.PARTIALLY_ACCEPTED,
    Category.REJECTED,
    Category.NEEDS_HUMAN_REVIEW,
)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = ScoreSettings()


def ev(
    source: str,
    markers: dict[str, Any] | None = None,
    *,
    text: str = "some output",
    score_class: ScoreClass = ScoreClass.VERDICT,
    metadata: dict[str, Any] | None = None,
    task_id: str = "task-1",
    run_id: str | None = None,
    parent_run_id: str | None = None,
    created_at: datetime = T0,
) -> EvidenceRecord:
    return EvidenceRecord(
        run_id=run_id or f"{source}:x",
        task_id=task_id,
        source=source,
        score_class=score_class,
        model_role=ModelRole.EXECUTOR,
        text=text,
        markers=markers or {},
        metadata=metadata or {},
        parent_run_id=parent_run_id,
        created_at=created_at,
        provenance=Provenance(
            source_file=f"_kb/{source}.jsonl", line_offset=0, line_number=1, sig_hash="0" * 64, recorded_at=created_at
        ),
    )


def score(e: EvidenceRecord, settings: ScoreSettings = SETTINGS) -> Verdict:
    v = score_evidence(e, settings)
    assert v.reasons and all(r.strip() for r in v.reasons)
    return v


# ------------------------------------------------------------------------------- class A


@pytest.mark.parametrize(
    ("attempt", "accepted", "category", "needle"),
    [
        (1, True, A, "attempt 1"),
        (2, True, P, "attempt 2"),
        (3, True, P, "attempt 3"),
        (4, True, P, "high cost"),
        (7, True, P, "high cost"),
        (1, False, R, "not accepted"),
        (5, False, R, "not accepted"),
    ],
)
def test_scrum_review_attempt_ladder(attempt: int, accepted: bool, category: Category, needle: str) -> None:
    v = score(ev("scrum_reviews", {"attempt": attempt, "accepted": accepted}))
    assert v.category is category
    assert any(needle in r for r in v.reasons)


def test_scrum_review_cost_reason_only_beyond_three() -> None:
    assert len(score(ev("scrum_reviews", {"attempt": 3, "accepted": True})).reasons) == 1
    assert len(score(ev("scrum_reviews", {"attempt": 4, "accepted": True})).reasons) == 2


@pytest.mark.parametrize(
    "markers", [{}, {"attempt": 1}, {"attempt": 1, "accepted": "yes"}, {"attempt": [1], "accepted": True},
                {"attempt": 0, "accepted": True}, {"attempt": True, "accepted": True}]
)
def test_scrum_review_unreadable_markers_need_review(markers: dict[str, Any]) -> None:
    assert score(ev("scrum_reviews", markers)).category is H


@pytest.mark.parametrize(("verdict", "category"), [("accept", A), ("reject", R), ("cycle", P), ("Accept ", A)])
def test_observer_review(verdict: str, category: Category) -> None:
    v = score(ev("observer_reviews", {"verdict": verdict}))
    assert v.category is category and "observer verdict" in v.reasons[0]


@pytest.mark.parametrize("verdict", [None, "maybe", 3])
def test_observer_review_unknown_verdict(verdict: Any) -> None:
    v = score(ev("observer_reviews", {"verdict": verdict}))
    assert v.category is H and "accept|reject|cycle" in v.reasons[0]


@pytest.mark.parametrize(
    ("resolution", "category"),
    [("fixed", A), ("waived", P), ("false_positive", R), ("invalid", R), ("open", H), (None, H), ("FIXED", A)],
)
@pytest.mark.parametrize("severity", ["info", "critical", "HIGH"])
def test_audit_is_judged_by_its_resolution_never_its_severity(severity: str, resolution: str | None, category: Category) -> None:
    markers = {"severity": severity} | ({"resolution": resolution} if resolution else {})
    v = score(ev("audits", markers))
    assert v.category is category, v.reasons
    if category is not H:
        assert resolution.lower() in v.reasons[0] and severity.lower() in v.reasons[1]


@pytest.mark.parametrize("severity", [None, "blocker", 3])
def test_audit_unknown_severity(severity: Any) -> None:
    assert score(ev("audits", {"severity": severity})).category is H


@pytest.mark.parametrize(
    ("failures", "verdict", "category"),
    [
        ([], "accept", A),
        (["insurance_gap"], "accept", P),
        ([], "cycle", P),
        ([], "reject", R),
        (["license_expired"], "reject", R),
        (["license_expired", "open_violation"], None, R),
        ([], None, H),
        ([], "perhaps", H),
    ],
)
def test_contract_analysis(failures: list[str], verdict: str | None, category: Category) -> None:
    v = score(ev("contract_analyses", {"failure_markers": failures, "observer_verdict": verdict}))
    assert v.category is category
    if failures and category is not H:
        assert any(f in " ".join(v.reasons) for f in failures)


# ------------------------------------------------------------------------------- class B


@pytest.mark.parametrize(
    ("status", "category"),
    [("committed", A), ("build_reverted", R), ("test_reverted", R), ("reverted", R),
     ("skipped_conflict", H), ("", H), (None, H)],
)
def test_auto_apply(status: str | None, category: Category) -> None:
    assert score(ev("auto_apply", {"status": status}, score_class=ScoreClass.TELEMETRY)).category is category


def _outcome(**markers: Any) -> EvidenceRecord:
    return ev("outcomes", markers, score_class=ScoreClass.TELEMETRY)


def test_outcomes() -> None:
    ok = [{"event": "lookup", "ok": True}, {"event": "notify", "ok": True}]
    bad = [{"event": "lookup", "ok": True}, {"event": "refund", "ok": False}]
    assert score(_outcome(all_events_ok=True, gap_signals=0, events=ok)).category is A
    v = score(_outcome(all_events_ok=True, gap_signals=2, events=ok))
    assert v.category is P and "2 gap signal" in v.reasons[0]
    v = score(_outcome(all_events_ok=False, gap_signals=0, events=bad))
    assert v.category is R and "refund" in v.reasons[0]
    assert score(_outcome(all_events_ok=False)).category is R
    assert score(_outcome()).category is H


def _mode(text: str = "findings...", **markers: Any) -> EvidenceRecord:
    return ev("mode_experiments", markers, text=text, score_class=ScoreClass.TELEMETRY)


def test_mode_experiments() -> None:
    assert score(_mode("", latency_ms=10, grounded_fraction=0.99)).category is R
    assert score(_mode("   \n", latency_ms=10)).reasons == ("empty output",)
    slow = score(_mode(latency_ms=130_000, grounded_fraction=0.99))
    assert slow.category is P and "latency" in slow.reasons[0]
    assert score(_mode(latency_ms=1000, grounded_fraction=0.8)).category is A
    assert score(_mode(latency_ms=1000, grounded_fraction=0.79)).category is P
    assert score(_mode(latency_ms=1000, grounded_fraction=0.5)).category is P
    assert score(_mode(latency_ms=1000, grounded_fraction=0.49)).category is R
    absent = score(_mode(latency_ms=1000))
    assert absent.category is H and "grounded_fraction" in absent.reasons[0]


def test_mode_experiment_thresholds_come_from_settings() -> None:
    strict = ScoreSettings(mode_latency_partial_s=0.5, grounded_accept=0.95, grounded_partial=0.9)
    assert score(_mode(latency_ms=1000, grounded_fraction=0.99), strict).category is P
    assert score(_mode(latency_ms=100, grounded_fraction=0.92), strict).category is P
    assert score(_mode(latency_ms=100, grounded_fraction=0.85), strict).category is R


@pytest.mark.parametrize(
    ("final", "category"),
    [("validated_local", A), ("escalated_validated", P), ("escalated_failed", R), ("failed", R),
     ("error", R), ("weird", H)],
)
def test_replay_runs(final: str, category: Category) -> None:
    e = ev("replay_runs", {"final_verdict": final, "escalated": False}, score_class=ScoreClass.TELEMETRY)
    assert score(e).category is category


# --------------------------------------------------------------------- SWE-agent and mapped


def _swe(resolved: bool | None, buckets: list[str] | None, text: str = "diff --git a/x b/x") -> EvidenceRecord:
    return ev("swebench_lite", {"resolved": resolved, "eval_buckets": buckets}, text=text,
              metadata={"adapter": "swe_agent"})


def test_swe_agent() -> None:
    assert score(_swe(True, ["applied", "generated", "resolved", "with_logs"])).category is A
    v = score(_swe(False, ["generated", "no_apply", "with_logs"]))
    assert v.category is R and "no_apply" in v.reasons[0]
    v = score(_swe(False, ["applied", "generated", "with_logs"]))
    assert v.category is R and "applied" in v.reasons[0]
    assert score(_swe(False, ["generated"])).category is H  # generated, never evaluated
    assert score(_swe(False, [])).category is H
    assert score(_swe(False, ["no_generation"], text="")).category is R
    assert score(_swe(None, None)).category is H  # no results file


def _mapped(value: Any, rule: dict[str, Any] | None) -> EvidenceRecord:
    meta: dict[str, Any] = {"adapter": "mapping"}
    if rule is not None:
        meta["verdict_rule"] = rule
    return ev("lint_bot", {"outcome": value} if value is not None else {}, metadata=meta)


def test_mapped_source_rule() -> None:
    rule = {"field": "outcome", "map": {"merged": "accepted", "closed": "rejected", "true": "partially_accepted"}}
    assert score(_mapped("merged", rule)).category is A
    assert score(_mapped("closed", rule)).category is R
    assert score(_mapped(True, rule)).category is P
    assert score(_mapped("draft", rule)).category is H
    assert score(_mapped(None, rule)).category is H
    no_rule = score(_mapped("merged", None))
    assert no_rule.category is H and "verdict rule" in no_rule.reasons[0]


def test_unknown_source_needs_review_with_reason() -> None:
    v = score(ev("somewhere_else", {"x": 1}))
    assert v.category is H and "somewhere_else" in v.reasons[0]


def test_extraction_rows_have_no_verdict_of_their_own() -> None:
    v = score(ev("distilled_facts", score_class=ScoreClass.EXTRACTION))
    assert v.category is H and v.reasons == (EXTRACTION_REASON,)


def test_verdict_requires_a_reason() -> None:
    with pytest.raises(ValueError):
        Verdict(A, ())
    with pytest.raises(ValueError):
        Verdict(A, (" ",))
    assert SCORER_VERSION


# ------------------------------------------------------------------------------- class C join


def _child(parent: str | None = None, at: datetime = T0, task: str = "task-1") -> EvidenceRecord:
    return ev("distilled_facts", score_class=ScoreClass.EXTRACTION, parent_run_id=parent, created_at=at, task_id=task)


PARENTS = [
    ParentRun("scrum_reviews:a", "task-1", R, T0 - timedelta(days=2)),
    ParentRun("scrum_reviews:b", "task-1", A, T0 - timedelta(days=1)),
    ParentRun("scrum_reviews:c", "task-1", P, T0 + timedelta(days=1)),
]


def test_join_prefers_the_named_parent() -> None:
    v = join_extraction(_child("scrum_reviews:a"), PARENTS)
    assert v is not None and v.category is R and v.parent_run_id == "scrum_reviews:a"
    assert "scrum_reviews:a" in v.reasons[0]


def test_join_falls_back_to_latest_parent_at_or_before() -> None:
    v = join_extraction(_child("scrum_reviews:missing"), PARENTS)
    assert v is not None and v.category is A and v.parent_run_id == "scrum_reviews:b"
    exact = join_extraction(_child(at=T0 - timedelta(days=1)), PARENTS)
    assert exact is not None and exact.parent_run_id == "scrum_reviews:b"  # "at or before" includes equal


def test_join_falls_back_to_latest_when_none_precede() -> None:
    v = join_extraction(_child(at=T0 - timedelta(days=30)), PARENTS)
    assert v is not None and v.parent_run_id == "scrum_reviews:c" and v.category is P
    assert "scrum_reviews:c" in v.reasons[0]


def test_join_without_parents_or_other_task() -> None:
    assert join_extraction(_child(), []) is None
    assert join_extraction(_child(task="task-2"), PARENTS) is None


def test_join_skips_parents_without_a_verdict() -> None:
    parents = [ParentRun("x:1", "task-1", H, T0), ParentRun("x:2", "task-1", R, T0 - timedelta(days=5))]
    v = join_extraction(_child(), parents)
    assert v is not None and v.parent_run_id == "x:2"
    assert join_extraction(_child(), parents[:1]) is None


def test_join_is_order_independent() -> None:
    tie = [ParentRun("x:b", "task-1", A, T0), ParentRun("x:a", "task-1", R, T0)]
    assert join_extraction(_child(), tie) == join_extraction(_child(), list(reversed(tie)))


def test_join_reasons_name_the_parent_and_how_it_was_found() -> None:
    """The reason is part of every scored line: its words are pinned here."""
    named = join_extraction(_child("scrum_reviews:a"), PARENTS)
    earlier = join_extraction(_child(), PARENTS)
    latest = join_extraction(_child(at=T0 - timedelta(days=30)), PARENTS)
    assert named is not None and named.reasons == (
        "inherits rejected from named parent scrum_reviews:a (task task-1)",)
    assert earlier is not None and earlier.reasons == (
        "inherits accepted from parent scrum_reviews:b (task task-1; latest parent created at or before this row)",)
    assert latest is not None and latest.reasons == (
        "inherits partially_accepted from parent scrum_reviews:c (task task-1; latest parent (none precedes this row))",)


_RUNS = st.sampled_from(["s:a", "s:b", "s:c", "s:d"])
_TASKS = st.sampled_from(["task-1", "task-2", "task-3"])
_DAYS = st.integers(min_value=-3, max_value=3).map(lambda d: T0 + timedelta(days=d))


def _task_parents(parents: list[ParentRun]) -> TaskParents:
    by_task: dict[str, list[ParentRun | None]] = {}
    entries: dict[str, list[ParentEntry]] = {}
    for p in parents:
        by_task.setdefault(p.task_id, []).append(p)
        entries.setdefault(p.task_id, []).append((p.run_id, p.task_id, p.category.value, p.created_at.isoformat()))
    return TaskParents(by_task, entries)


_PARENTS = st.lists(st.builds(ParentRun, _RUNS, _TASKS, st.sampled_from([A, P, R, H]), _DAYS), max_size=8)


@settings(max_examples=300, deadline=None)
@given(before=_PARENTS, after=_PARENTS,
       rows=st.lists(st.builds(JoinKey, _TASKS, st.none() | _RUNS | st.just("s:missing"), _DAYS), min_size=1,
                     max_size=12))
def test_join_choice_changes_exactly_when_the_verdict_does(before: list[ParentRun], after: list[ParentRun],
                                                           rows: list[JoinKey]) -> None:
    """A checkpoint keeps each class C row's join choice, and a row whose task's parents changed is
    scored again only when its choice differs: that must be exactly when its verdict differs
    (any parents before and after, named, missing and unnamed parents, any dates), also after the
    choice went through the checkpoint's JSON."""
    old, new = _task_parents(before), _task_parents(after)
    for row in rows:
        kept = PartitionCheckpoint.model_validate_json(dumps({
            "end": 0, "lines": 1, "prefix_hash": "", "scored_sha256": "", "categories": "h",
            "extraction": [[0, 0, row.task_id, "needs_human_review", row.parent_run_id, row.created_at.isoformat(),
                            join_choice(row, old)]]})).extraction[0][-1]
        assert kept == join_choice(row, old)
        assert (join_choice(row, new) == kept) == (joined_verdict(row, new) == joined_verdict(row, old))
        assert (kept is None) == (joined_verdict(row, old) is None)
