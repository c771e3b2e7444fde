"""The deterministic scoring rules, in one place (docs/DESIGN.md, "Scoring").

Pure functions of an EvidenceRecord (and the score settings): no I/O, no model calls, no clock.
Each verdict carries at least one reason a human can read. Where a rule is a lookup (observer
verdicts, audit severities, replay verdicts, auto-apply statuses) it is a table below, so a
change of policy is a change of data. distill.score applies these rules to the evidence view
and joins extraction rows to their parents with `join_extraction`.
"""

from __future__ import annotations

import bisect

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from operator import itemgetter
from typing import Any, NamedTuple

from distill.config import ScoreSettings
from distill.records import Category, EvidenceRecord, ScoreClass

SCORER_VERSION = "1.1.0"
"""Bump when any rule changes; settings.score.scorer_version overrides it per workspace."""

A = Category.ACCEPTED
P = Category.PARTIALLY_ACCEPTED
R = Category.REJECTED
H = Category.NEEDS_HUMAN_REVIEW


@dataclass(frozen=True, slots=True)
class Verdict:
    category: Category
    reasons: tuple[str, ...]
    parent_run_id: str | None = None

    def __post_init__(self) -> None:
        if not self.reasons or not all(isinstance(r, str) and r.strip() for r in self.reasons):
            raise ValueError("a verdict needs at least one non-empty reason")


class JoinKey(NamedTuple):
    """What `ParentIndex.join` reads of a class C row. The score checkpoint keeps it per row, so a
    row whose task gained or lost a parent is re-scored only when its join now gives another verdict."""

    task_id: str
    parent_run_id: str | None
    created_at: datetime


class ParentRun(NamedTuple):
    """A verdict-bearing run that extraction rows of the same task may inherit from."""

    run_id: str
    task_id: str
    category: Category
    created_at: datetime


def verdict(category: Category, *reasons: str) -> Verdict:
    return Verdict(category, tuple(reasons))


def human(reason: str) -> Verdict:
    return Verdict(H, (reason,))


# ------------------------------------------------------------------------------------- tables

OBSERVER_VERDICTS: dict[str, Category] = {"accept": A, "reject": R, "cycle": P}
AUDIT_SEVERITIES = ("info", "low", "medium", "high", "critical")
AUDIT_RESOLUTION: dict[str, Category | None] = {
    "fixed": A,  # the finding was real: the code was changed because of it
    "waived": P,  # acknowledged, not acted on: a finding of limited use
    "open": None,  # no outcome yet: a person has to judge it
    "false_positive": R,
    "invalid": R,
    "rejected": R,
}
"""An audit is judged by what became of its finding, never by its severity: a critical finding
that got fixed is the audit at its best, and scoring it by severity would keep every high or
critical finding out of RAG and teach preference data to play severity down (scorer 1.1.0)."""
REPLAY_VERDICTS: dict[str, Category] = {
    "validated_local": A,
    "escalated_validated": P,
    "escalated_failed": R,
    "failed": R,
    "error": R,
}
AUTO_APPLY_STATUS: dict[str, Category] = {"committed": A}
"""Exact statuses; any status ending in '_reverted' (or 'reverted') is rejected, see below."""
SCRUM_PARTIAL_MAX_ATTEMPT = 3
"""Accepted on attempt 2..this -> partial; beyond -> partial with a cost reason."""
CONTRACT_VERDICTS: dict[str, Category] = {"accept": A, "reject": R, "cycle": P}
SWE_BUCKET_REASONS: tuple[tuple[str, str], ...] = (
    ("no_apply", "patch did not apply to the repository (bucket no_apply)"),
    ("install_fail", "environment install failed (bucket install_fail)"),
    ("reset_failed", "repository reset failed (bucket reset_failed)"),
    ("test_timeout", "tests timed out (bucket test_timeout)"),
    ("test_errored", "tests errored (bucket test_errored)"),
    ("applied", "patch applied but the failing tests still fail (bucket applied, not resolved)"),
    ("with_logs", "evaluated, not applied and not resolved (bucket with_logs)"),
)
SWE_EVALUATED = frozenset(b for b, _ in SWE_BUCKET_REASONS) | {"resolved"}

EXTRACTION_REASON = "extraction row; no verdict of its own"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ class A rules


def score_scrum_review(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    accepted = ev.markers.get("accepted")
    attempt = ev.markers.get("attempt")
    if not isinstance(accepted, bool):
        return human("scrum review without a boolean 'accepted' marker")
    if not accepted:
        at = f" (attempt {attempt})" if _is_int(attempt) else ""
        return verdict(R, f"review not accepted{at}")
    if not _is_int(attempt) or attempt < 1:
        return human(f"accepted scrum review with no valid attempt number (attempt={attempt!r})")
    if attempt == 1:
        return verdict(A, "accepted on attempt 1")
    if attempt <= SCRUM_PARTIAL_MAX_ATTEMPT:
        return verdict(P, f"accepted on attempt {attempt} (needed retries)")
    return verdict(
        P,
        f"accepted on attempt {attempt} (needed retries)",
        f"high cost: {attempt} attempts, more than {SCRUM_PARTIAL_MAX_ATTEMPT}",
    )


def score_observer_review(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    raw = ev.markers.get("verdict")
    category = OBSERVER_VERDICTS.get(raw.strip().lower()) if isinstance(raw, str) else None
    if category is None:
        return human(f"observer verdict {raw!r} is not one of accept|reject|cycle")
    return verdict(category, f"observer verdict: {raw.strip().lower()}")


def score_audit(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    raw_severity = ev.markers.get("severity")
    severity = raw_severity.strip().lower() if isinstance(raw_severity, str) else None
    if severity not in AUDIT_SEVERITIES:
        return human(f"audit severity {raw_severity!r} is not one of {', '.join(AUDIT_SEVERITIES)}")
    raw = ev.markers.get("resolution")
    resolution = raw.strip().lower() if isinstance(raw, str) else None
    if resolution not in AUDIT_RESOLUTION:
        return human(f"audit finding ({severity}) has resolution {raw!r}, not one of {', '.join(AUDIT_RESOLUTION)}")
    category = AUDIT_RESOLUTION[resolution]
    if category is None:
        return human(f"audit finding ({severity}) is still {resolution}: no outcome to judge it by")
    return verdict(category, f"audit finding resolution: {resolution}", f"severity {severity} (recorded, not scored)")


def score_contract_analysis(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    markers = ev.markers.get("failure_markers")
    raw = ev.markers.get("observer_verdict")
    if markers is not None and not (isinstance(markers, list) and all(isinstance(m, str) for m in markers)):
        return human("contract analysis with unreadable failure markers")
    failures = list(markers or [])
    observed = OBSERVER_VERDICTS.get(raw.strip().lower()) if isinstance(raw, str) else None
    if raw is not None and observed is None:
        return human(f"observer verdict {raw!r} is not one of accept|reject|cycle")
    fail_note = f"failure markers: {', '.join(failures)}" if failures else "no failure markers"
    if observed is R:
        return verdict(R, "observer verdict: reject", fail_note)
    if observed is A:
        return verdict(P, "observer verdict: accept", fail_note) if failures else verdict(A, "observer verdict: accept", fail_note)
    if observed is P:
        return verdict(P, "observer verdict: cycle", fail_note)
    if failures:
        return verdict(R, fail_note, "no observer verdict")
    return human("no failure markers and no observer verdict")


def score_swe_agent(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    resolved = ev.markers.get("resolved")
    buckets = ev.markers.get("eval_buckets")
    if resolved is None or buckets is None:
        return human("no evaluation results file for this trajectory")
    if not isinstance(resolved, bool) or not isinstance(buckets, list):
        return human("unreadable SWE-bench evaluation markers")
    if resolved:
        return verdict(A, "resolved by the SWE-bench evaluation")
    if not ev.text.strip():
        return verdict(R, "empty submission (no patch generated)")
    evaluated = [b for b in buckets if b in SWE_EVALUATED]
    if not evaluated:
        listed = ", ".join(str(b) for b in buckets) or "none"
        return human(f"submission was never evaluated (buckets: {listed})")
    for bucket, reason in SWE_BUCKET_REASONS:
        if bucket in buckets:
            return verdict(R, f"not resolved: {reason}")
    return verdict(R, "not resolved")  # pragma: no cover - evaluated implies a listed bucket


# ------------------------------------------------------------------------------ class B rules


def score_auto_apply(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    raw = ev.markers.get("status")
    if not isinstance(raw, str) or not raw.strip():
        return human("auto-apply row without a status")
    status = raw.strip().lower()
    if status in AUTO_APPLY_STATUS:
        return verdict(AUTO_APPLY_STATUS[status], f"patch {status}")
    if status == "reverted" or status.endswith("_reverted"):
        return verdict(R, f"patch {status}")
    return human(f"auto-apply status {raw!r} says neither committed nor reverted")


def score_outcome(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    events = ev.markers.get("events")
    all_ok = ev.markers.get("all_events_ok")
    gaps = ev.markers.get("gap_signals")
    failed: list[str] = []
    if isinstance(events, list):
        failed = [str(e.get("event")) for e in events if isinstance(e, dict) and e.get("ok") is False]
    if failed or all_ok is False:
        named = f": {', '.join(failed)}" if failed else ""
        return verdict(R, f"{len(failed) or 'some'} scenario event(s) failed{named}")
    if _is_int(gaps) and gaps > 0:
        return verdict(P, f"all events ok but {gaps} gap signal(s)")
    if all_ok is True or (isinstance(events, list) and events):
        return verdict(A, "all scenario events ok, no gap signals")
    return human("outcome row without event results")


def score_mode_experiment(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    if not ev.text.strip():
        return verdict(R, "empty output")
    latency_ms = ev.markers.get("latency_ms")
    if _is_number(latency_ms) and latency_ms / 1000 > settings.mode_latency_partial_s:
        return verdict(
            P, f"latency {latency_ms / 1000:.1f}s over the {settings.mode_latency_partial_s:g}s budget"
        )
    grounded = ev.markers.get("grounded_fraction")
    if grounded is None:
        return human("no validation_results.grounded_fraction to judge the output by")
    if not _is_number(grounded):
        return human(f"grounded_fraction {grounded!r} is not a number")
    if grounded >= settings.grounded_accept:
        return verdict(A, f"grounded fraction {grounded:.2f} >= {settings.grounded_accept:g}")
    if grounded >= settings.grounded_partial:
        return verdict(P, f"grounded fraction {grounded:.2f} >= {settings.grounded_partial:g} (partial)")
    return verdict(R, f"grounded fraction {grounded:.2f} < {settings.grounded_partial:g}")


def score_replay_run(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    raw = ev.markers.get("final_verdict")
    category = REPLAY_VERDICTS.get(raw) if isinstance(raw, str) else None
    if category is None:
        return human(f"replay final_verdict {raw!r} is not one of {', '.join(REPLAY_VERDICTS)}")
    return verdict(category, f"replay final verdict: {raw}")


# --------------------------------------------------------------------------- mapped sources


def score_mapped(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    """A [[sources]] mapping with `verdict` + `verdict_map`: look the marker up in the map."""
    rule = ev.metadata.get("verdict_rule")
    if not isinstance(rule, dict) or not isinstance(rule.get("field"), str) or not isinstance(rule.get("map"), dict):
        return human(f"mapped source '{ev.source}' has no verdict rule (set verdict + verdict_map in distill.toml)")
    field = rule["field"]
    value = ev.markers.get(field)
    if value is None:
        return human(f"mapped source '{ev.source}': verdict field '{field}' is absent")
    key = str(value).lower() if isinstance(value, bool) else str(value)
    target = rule["map"].get(key)
    try:
        category = Category(target) if target is not None else None
    except ValueError:
        category = None
    if category is None:
        return human(f"mapped source '{ev.source}': {field}={value!r} is not in verdict_map")
    return verdict(category, f"{field}={value!r} maps to {category.value} (distill.toml verdict_map)")


RULES: dict[str, Callable[[EvidenceRecord, ScoreSettings], Verdict]] = {
    "scrum_reviews": score_scrum_review,
    "observer_reviews": score_observer_review,
    "audits": score_audit,
    "contract_analyses": score_contract_analysis,
    "auto_apply": score_auto_apply,
    "outcomes": score_outcome,
    "mode_experiments": score_mode_experiment,
    "replay_runs": score_replay_run,
}
ADAPTER_RULES: dict[str, Callable[[EvidenceRecord, ScoreSettings], Verdict]] = {
    "swe_agent": score_swe_agent,
    "mapping": score_mapped,
}


def score_evidence(ev: EvidenceRecord, settings: ScoreSettings) -> Verdict:
    """The category of one run and why. Class C rows get needs_human_review here; the engine
    then tries `join_extraction` for them."""
    if ev.score_class is ScoreClass.EXTRACTION:
        return human(EXTRACTION_REASON)
    adapter = ev.metadata.get("adapter")
    rule = ADAPTER_RULES.get(adapter) if isinstance(adapter, str) else None
    if rule is None:
        rule = RULES.get(ev.source)
    if rule is None:
        return human(f"no scoring rule for source '{ev.source}'")
    return rule(ev, settings)


# ------------------------------------------------------------------------------- class C join


class ParentIndex:
    """One task's verdict-bearing parents, indexed so a join costs O(log parents), not O(parents):
    a workspace where a task recurs over thousands of runs would otherwise score in quadratic time."""

    def __init__(self, parents: Sequence[ParentRun]) -> None:
        self.by_run: dict[str, ParentRun] = {}
        for p in parents:
            self.by_run.setdefault(p.run_id, p)  # the first one listed, as a scan would find it
        # Ties on (created_at, run_id) go to the first one listed, as a scan's max() would pick it:
        # among equal keys the earliest-listed parent sorts last, where the bisect looks.
        listed = [(p.created_at, p.run_id, -n, p) for n, p in enumerate(parents) if p.category is not H]
        self.candidates = [p for *_, p in sorted(listed, key=itemgetter(0, 1, 2))]
        self.created = [p.created_at for p in self.candidates]

    def join(self, ev: EvidenceRecord | JoinKey) -> Verdict | None:
        """Class C rows inherit the category of a verdict-bearing parent of the same task:
        the parent the row names (parent_run_id) when present; else the latest parent created
        at or before the row; else the latest parent. None when there is none.

        Parents without a verdict (needs_human_review) are not candidates: they have nothing to
        pass on, except that a row naming such a parent inherits its needs_human_review."""
        choice = self.choose(ev)
        return None if choice is None else joined(ev.task_id, *choice)

    def choose(self, ev: EvidenceRecord | JoinKey) -> tuple[ParentRun, JoinHow] | None:
        """The parent `join` passes on and how it was found: the verdict is a function of these
        and the task alone (`joined`), so a caller joining many rows can key on them."""
        if ev.parent_run_id:
            named = self.by_run.get(ev.parent_run_id)
            if named is not None:
                return named, JoinHow.NAMED
        if not self.candidates:
            return None
        earlier = bisect.bisect_right(self.created, ev.created_at)
        if earlier:
            return self.candidates[earlier - 1], JoinHow.EARLIER
        return self.candidates[-1], JoinHow.LATEST


class JoinHow(Enum):
    """How `ParentIndex.choose` found a row's parent."""

    NAMED = "named"
    EARLIER = "latest parent created at or before this row"
    LATEST = "latest parent (none precedes this row)"


def joined(task_id: str, parent: ParentRun, how: JoinHow) -> Verdict:
    """The verdict a class C row of `task_id` inherits from `parent`, found as `how` says."""
    if how is JoinHow.NAMED:
        reason = f"inherits {parent.category.value} from named parent {parent.run_id} (task {task_id})"
    else:
        reason = f"inherits {parent.category.value} from parent {parent.run_id} (task {task_id}; {how.value})"
    return Verdict(parent.category, (reason,), parent.run_id)


def join_extraction(ev: EvidenceRecord, parents: Sequence[ParentRun]) -> Verdict | None:
    """`ParentIndex.join` over the parents of the row's own task (for one-off joins)."""
    return ParentIndex([p for p in parents if p.task_id == ev.task_id]).join(ev)
