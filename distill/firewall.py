"""The contamination firewall's policy, written once.

Which score categories may reach which export, which never may, and what counts as a violation
of that. Every layer asks this module and nothing else: the exporters (what to ship), the record
schemas (what a shipped row may carry), the export's re-read of what it wrote, receipts and drift.
The content gates (credentials, invented file paths, benchmark overlap) are distill.export.gates;
the secret scanner is distill.secrets.

Pure: categories and rows in, decisions and typed violations out.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from distill.records.common import Category
from distill.records.quarantine import QuarantineReason


class ExportKind(StrEnum):
    RAG = "rag"
    SFT = "sft"
    PREFERENCE = "preference"


# Never shipped, whatever flag is passed. These sets never grow.
NEVER: Mapping[ExportKind, frozenset[Category]] = {
    ExportKind.RAG: frozenset({Category.REJECTED}),
    ExportKind.SFT: frozenset({Category.REJECTED, Category.NEEDS_HUMAN_REVIEW}),
    # neither side of a pair may be unreviewed: its category says nothing about its quality yet
    ExportKind.PREFERENCE: frozenset({Category.NEEDS_HUMAN_REVIEW}),
}
CHOSEN_NEVER: frozenset[Category] = frozenset({Category.REJECTED, Category.NEEDS_HUMAN_REVIEW})
"""The preferred side of a pair is something to learn from: never rejected, never unreviewed."""

DEFAULT: Mapping[ExportKind, frozenset[Category]] = {
    ExportKind.RAG: frozenset({Category.ACCEPTED, Category.PARTIALLY_ACCEPTED}),
    ExportKind.SFT: frozenset({Category.ACCEPTED}),
    ExportKind.PREFERENCE: frozenset({Category.ACCEPTED, Category.PARTIALLY_ACCEPTED, Category.REJECTED}),
}
OPT_IN: Mapping[ExportKind, Mapping[str, Category]] = {
    ExportKind.RAG: {"include_review": Category.NEEDS_HUMAN_REVIEW},
    ExportKind.SFT: {"include_partial": Category.PARTIALLY_ACCEPTED},
    ExportKind.PREFERENCE: {},
}
FLAG_NAMES = {"include_review": "--include-review", "include_partial": "--include-partial"}


def allowed_categories(kind: ExportKind, *, include_review: bool = False, include_partial: bool = False) -> frozenset[Category]:
    """What one export run ships: the defaults, the opted-in extras, never a NEVER category."""
    flags = {"include_review": include_review, "include_partial": include_partial}
    extra = {cat for flag, cat in OPT_IN[kind].items() if flags[flag]}
    return frozenset((DEFAULT[kind] | extra) - NEVER[kind])


def shippable_categories(kind: ExportKind) -> frozenset[Category]:
    """Every category a row of this export may carry under any flags (the schema layer's set)."""
    return frozenset((DEFAULT[kind] | set(OPT_IN[kind].values())) - NEVER[kind])


def unsafe_reason(kind: ExportKind) -> QuarantineReason:
    return {
        ExportKind.RAG: QuarantineReason.UNSAFE_RAG_CATEGORY,
        ExportKind.SFT: QuarantineReason.UNSAFE_SFT_CATEGORY,
        ExportKind.PREFERENCE: QuarantineReason.CATEGORY_DISALLOWED,
    }[kind]


class Refusal(NamedTuple):
    reason: QuarantineReason
    message: str


@functools.cache  # asked once per exported row, answered from a handful of enum combinations
def refuse_category(
    kind: ExportKind, category: Category, *, include_review: bool = False, include_partial: bool = False
) -> Refusal | None:
    """Why a row of this category does not ship in this run, or None when it may."""
    if category in NEVER[kind]:
        if kind is ExportKind.PREFERENCE:
            return Refusal(unsafe_reason(kind), f"category={category.value} can be neither chosen nor rejected")
        return Refusal(unsafe_reason(kind), f"category={category.value} never ships to {kind.value.upper()}")
    allowed = allowed_categories(kind, include_review=include_review, include_partial=include_partial)
    if category in allowed:
        return None
    hint = [FLAG_NAMES[flag] for flag, cat in OPT_IN[kind].items() if cat is category]
    opt = f" ({hint[0]} to opt in)" if hint else ""
    return Refusal(
        QuarantineReason.CATEGORY_DISALLOWED,
        f"category={category.value} not in {sorted(c.value for c in allowed)}{opt}",
    )


def require_shippable(kind: ExportKind) -> Callable[[Category], Category]:
    """A pydantic AfterValidator: the schema layer refuses what the exporter should have filtered."""
    allowed = shippable_categories(kind)

    def check(category: Category) -> Category:
        if category not in allowed:
            raise ValueError(f"category {category.value} can never be in the {kind.value} export")
        return category

    return check


# ---------------------------------------------------------------------------------------------
# violations: what an export that broke the policy looks like


class ViolationCode(StrEnum):
    CATEGORY = "category"  # a row whose category (label or score) may not be in this export
    CHOSEN_CATEGORY = "chosen_category"  # a pair whose preferred side is rejected or unreviewed
    SELF_PAIR = "self_pair"
    IDENTICAL_TEXTS = "identical_texts"
    DUPLICATE_ID = "duplicate_id"
    PAIRS_PER_TASK = "pairs_per_task"
    SCHEMA = "schema"  # a row the export's record schema refuses
    STALE_ROW = "stale_row"  # shipped earlier, forbidden now: its run scored into a NEVER category, or it fails the gates
    STALE_LABEL = "stale_label"  # carries a category its run no longer has (scored again since, or relabelled by hand)
    CONSERVATION = "conservation"  # rows in != written + quarantined + deduped + skipped


class Violation(BaseModel):
    """One breach of the firewall found in an export (as written, or about to be written)."""

    model_config = ConfigDict(frozen=True)

    export: ExportKind
    code: ViolationCode
    detail: str
    line: int | None = None
    record_id: str | None = None

    @property
    def error_code(self) -> str:
        """The validation error code receipts and drift key on (always starts with `firewall`)."""
        return f"firewall_{self.export.value}_{self.code.value}"

    def message(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        ident = f"{self.record_id}: " if self.record_id else ""
        return f"{self.error_code}: {where}{ident}{self.detail}"


CategoryLookup = Callable[[Any, Any], str | None]
"""(run_id, sig_hash) -> the category score gave that evidence revision, None when unknown."""


def _category(value: Any) -> Category | None:
    try:
        return Category(value)
    except ValueError:
        return None


def _sig(row: Mapping[str, Any], field: str) -> Any:
    prov = row.get(field)
    return prov.get("sig_hash") if isinstance(prov, Mapping) else None


def pair_side(row: Mapping[str, Any], side: str) -> tuple[Any, Any]:
    """(run id, sig_hash) of a preference row's "chosen" or "rejected" answer, as exported."""
    return row.get(f"{side}_run_id"), _sig(row, f"{side}_provenance")


def pair_problems(chosen_run_id: Any, rejected_run_id: Any, chosen: Any, rejected: Any) -> list[tuple[ViolationCode, str]]:
    """The pairing rules a preference row must keep (shared by the schema and the export check)."""
    problems: list[tuple[ViolationCode, str]] = []
    if chosen_run_id is not None and chosen_run_id == rejected_run_id:
        problems.append((ViolationCode.SELF_PAIR, f"self-pair: chosen and rejected are both run {chosen_run_id}"))
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip():
        problems.append((ViolationCode.IDENTICAL_TEXTS, "chosen and rejected texts are identical"))
    return problems


def row_violations(
    kind: ExportKind, row: Mapping[str, Any], *, line: int | None = None, scored: CategoryLookup | None = None
) -> list[Violation]:
    """Policy breaches of one export row: the category it carries and, when `scored` is given, the
    category score gave the evidence it came from (so a row relabelled after the fact is caught)."""
    lookup = scored or (lambda run_id, sig: None)
    rid = str(row.get("id")) if row.get("id") is not None else None
    out: list[Violation] = []

    def add(code: ViolationCode, detail: str) -> None:
        out.append(Violation(export=kind, code=code, detail=detail, line=line, record_id=rid))

    if kind is ExportKind.PREFERENCE:
        for code, detail in pair_problems(row.get("chosen_run_id"), row.get("rejected_run_id"), row.get("chosen"), row.get("rejected")):
            add(code, detail)
        for side, never in (("chosen", CHOSEN_NEVER), ("rejected", NEVER[kind])):
            label = row.get(f"{side}_category")
            score = lookup(*pair_side(row, side))
            bad = [v for v in (label, score) if v is not None and (_category(v) is None or _category(v) in never)]
            if bad:
                code = ViolationCode.CHOSEN_CATEGORY if side == "chosen" else ViolationCode.CATEGORY
                add(code, f"{side} side is {bad[0]} (label {label}, scored {score})")
            elif label is not None and score is not None and _category(label) is not _category(score):
                add(ViolationCode.STALE_LABEL, f"{side} side is labelled {label} but its run is scored {score} now")
        return out
    field = "success_score" if kind is ExportKind.RAG else "quality_score"
    label = row.get(field)
    score = lookup(row.get("source_run_id"), _sig(row, "provenance"))
    label_cat = _category(label)
    score_cat = _category(score) if score is not None else None
    if label_cat is None or label_cat not in shippable_categories(kind) or (score_cat is not None and score_cat in NEVER[kind]):
        add(ViolationCode.CATEGORY, f"{kind.value} row from a {score or label} run (label {label}, scored {score})")
    elif score_cat is not None and score_cat is not label_cat:
        # a row a trainer filters by its label must carry its run's category: a score change after
        # it shipped (accepted -> partially_accepted) or a hand edit leaves a label that lies
        add(ViolationCode.STALE_LABEL, f"labelled {label} but its run is scored {score} now")
    return out


@dataclass
class RowCounts:
    """What rows_violations counts across rows: each id, and each task's pairs (preference)."""

    ids: Counter[str] = field(default_factory=Counter)
    per_task: Counter[str] = field(default_factory=Counter)


PriorCount = Callable[[str, str], int]
"""("id" | "task", value) -> how many rows verified earlier (a clean prefix of the file) carry it."""


def rows_violations(
    kind: ExportKind,
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    scored: CategoryLookup | None = None,
    max_pairs_per_task: int | None = None,
    counts: RowCounts | None = None,
    prior: PriorCount | None = None,
) -> list[Violation]:
    """Every breach in a whole export given as (line number, row): per row, repeated ids, and the
    per-task pair cap for preference. `prior`: the rows are the tail of a file whose earlier rows
    were verified clean (so only a count that includes a tail row can break a rule); `counts`
    is filled with what these rows counted, for the next verification to start from."""
    out: list[Violation] = []
    tally = counts if counts is not None else RowCounts()
    ids, per_task = tally.ids, tally.per_task
    before = prior or (lambda what, value: 0)
    for line, row in rows:
        ids[str(row.get("id"))] += 1
        out.extend(row_violations(kind, row, line=line, scored=scored))
        if kind is ExportKind.PREFERENCE:
            per_task[str(row.get("task_id"))] += 1
    out.extend(
        Violation(export=kind, code=ViolationCode.DUPLICATE_ID, detail=f"id appears {n} times", record_id=i)
        for i, n in ((i, n + before("id", i)) for i, n in sorted(ids.items())) if n > 1
    )
    if max_pairs_per_task is not None:
        out.extend(
            Violation(export=kind, code=ViolationCode.PAIRS_PER_TASK, detail=f"task {t} has {n} pairs (max {max_pairs_per_task})")
            for t, n in ((t, n + before("task", t)) for t, n in sorted(per_task.items())) if n > max_pairs_per_task
        )
    return out


def export_kind_of_stage(stage: str) -> ExportKind | None:
    """`export-sft` -> ExportKind.SFT; None for a stage that is not an export."""
    name = stage.removeprefix("export-")
    return ExportKind(name) if name != stage and name in ExportKind._value2member_map_ else None


def categories_never_in(stage: str) -> frozenset[str]:
    """Category values that must never appear in a stage's output (drift alerts on them)."""
    kind = export_kind_of_stage(stage)
    if kind is None or kind is ExportKind.PREFERENCE:
        return frozenset()
    return frozenset(c.value for c in NEVER[kind])
