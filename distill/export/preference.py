"""Preference exporter: chosen/rejected pairs with a real category gap.

A pair compares two answers to the same question. Same-task pairs: within one task_id and one
instruction (the question the run answered), accepted x rejected first, accepted x
partially_accepted as the fallback, at most `max_pairs_per_task` per task (counting pairs already
exported). Cross-source pairs: verdict-bearing rows of different sources and tasks that answered
the very same instruction and disagree (accepted vs rejected), flagged pairing="cross_source". Never a self-pair (same run,
e.g. two revisions of one run), never identical texts, never an unreviewed side; the
PreferenceSample schema refuses all three again.

Accounting is per input row: a row used by a newly written pair is written, one used only by
pairs exported earlier is deduped, any other row is quarantined with the reason it found no
pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from distill.export.gates import Firewall, GateInput, meta_text
from distill.export.quarantine import quarantine_broken, quarantine_joined, validation_errors
from distill.export.reader import Broken, Joined, ReaderItem
from distill.export.sft import has_instruction_shape, synthesize_instruction
from distill.firewall import ExportKind, refuse_category
from distill.hashing import content_id
from distill.jsonl import dumps
from distill.records import Category, ModelRole, PreferenceSample, QuarantineReason, QuarantineRecord, ScoreClass
from distill.records.stage import StageReport

_REVIEW_ROLES = frozenset({ModelRole.REVIEWER, ModelRole.EXECUTOR})
RowKey = tuple[str, str]  # (run_id, sig_hash)


def pref_id(chosen: RowKey, rejected: RowKey) -> str:
    return content_id("pref", chosen[0], rejected[0], chosen[1], rejected[1])


def cross_task_id(prompt: str) -> str:
    """The task id of a cross-source pair: the question both sides answered."""
    return content_id("question", prompt)


@dataclass(frozen=True, slots=True)
class Row:
    index: int
    joined: Joined
    prompt: str

    @property
    def key(self) -> RowKey:
        return self.joined.key

    @property
    def category(self) -> Category:
        return self.joined.scored.category

    @property
    def text(self) -> str:
        return self.joined.evidence.text


@dataclass
class PreferenceExport:
    sample_lines: list[bytes] = field(default_factory=list)  # new pairs as JSON lines, in pairing order
    # quarantine rows as JSON lines, input order: a serialised row is a fraction of its model's memory
    quarantine_lines: list[bytes] = field(default_factory=list)
    pairs_same_task: int = 0
    pairs_cross_source: int = 0
    pairs_existing: int = 0


def _spread(chosen: list[Row], rejected: list[Row]) -> list[tuple[Row, Row]]:
    """Every chosen x rejected combination, ordered so that the cap spreads over rows."""
    combos = [(i, j) for i in range(len(chosen)) for j in range(len(rejected))]
    combos.sort(key=lambda ij: (ij[0] + ij[1], ij[0], ij[1]))
    return [(chosen[i], rejected[j]) for i, j in combos]


def _sorted(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.key, r.index))


def _build(chosen: Row, rejected: Row, *, task_id: str, pairing: str, prompt: str) -> PreferenceSample:
    c, r = chosen.joined, rejected.joined
    reason = (
        f"chosen {c.evidence.source} run scored {chosen.category.value} ({c.scored.reasons[0]}); "
        f"rejected {r.evidence.source} run scored {rejected.category.value} ({r.scored.reasons[0]})"
    )
    return PreferenceSample(
        id=pref_id(chosen.key, rejected.key),
        prompt=prompt,
        chosen=chosen.text,
        rejected=rejected.text,
        chosen_run_id=c.evidence.run_id,
        rejected_run_id=r.evidence.run_id,
        chosen_category=chosen.category,
        rejected_category=rejected.category,
        task_id=task_id,
        pairing=pairing,  # type: ignore[arg-type]
        reason=reason,
        created_at=max(c.evidence.created_at, r.evidence.created_at),
        chosen_provenance=c.evidence.provenance,
        rejected_provenance=r.evidence.provenance,
    )


class _Pairer:
    """Pair selection with the per-task cap and the reasons rows end up unpaired."""

    def __init__(self, existing_ids: set[str], existing_per_task: Counter[str], cap: int) -> None:
        self.existing_ids = existing_ids
        self.used = Counter(existing_per_task)
        self.cap = cap
        self.new: list[bytes] = []  # serialised as made: a line is a fraction of the model's memory
        self.new_ids: set[str] = set()
        self.in_new: set[RowKey] = set()
        self.in_existing: set[RowKey] = set()
        self.why: dict[RowKey, tuple[QuarantineReason, str]] = {}

    def _note(self, rows: tuple[Row, Row], reason: QuarantineReason, msg: str) -> None:
        for row in rows:
            self.why.setdefault(row.key, (reason, msg))

    def offer(self, pairs: list[tuple[Row, Row]], *, task_id: str, pairing: str, prompt_of: str | None) -> int:
        """Take valid pairs in order until the task's cap; returns how many new pairs."""
        made = 0
        # pairs exported by an earlier run are kept first (they already count against the cap)
        for chosen, rejected in pairs:
            if pref_id(chosen.key, rejected.key) in self.existing_ids:
                self.in_existing.update((chosen.key, rejected.key))
        for chosen, rejected in pairs:
            pid = pref_id(chosen.key, rejected.key)
            if pid in self.existing_ids or pid in self.new_ids:
                continue
            if chosen.joined.evidence.run_id == rejected.joined.evidence.run_id:
                self._note((chosen, rejected), QuarantineReason.SELF_PAIRING,
                           f"only counterpart is another revision of run {chosen.joined.evidence.run_id}")
                continue
            if chosen.text.strip() == rejected.text.strip():
                self._note((chosen, rejected), QuarantineReason.INVALID_PREFERENCE_PAIRING,
                           "chosen and rejected texts are identical")
                continue
            if self.used[task_id] >= self.cap:
                self._note((chosen, rejected), QuarantineReason.INVALID_PREFERENCE_PAIRING,
                           f"{task_id} already has {self.cap} pairs (max_pairs_per_task)")
                continue
            prompt = prompt_of if prompt_of is not None else chosen.prompt
            try:
                sample = _build(chosen, rejected, task_id=task_id, pairing=pairing, prompt=prompt)
            except ValidationError as exc:
                self._note((chosen, rejected), QuarantineReason.SCHEMA_VIOLATION, "; ".join(validation_errors(exc)))
                continue
            self.new.append(dumps(sample.model_dump(mode="json")))
            self.new_ids.add(pid)
            self.in_new.update((chosen.key, rejected.key))
            self.used[task_id] += 1
            made += 1
        return made


def _line(rec: QuarantineRecord) -> tuple[str, bytes]:
    return rec.reason.value, dumps(rec.to_json_dict())


def export_preference(
    items: Iterable[ReaderItem],
    firewall: Firewall,
    report: StageReport,
    *,
    existing_ids: set[str],
    existing_per_task: Counter[str],
    max_pairs_per_task: int,
    cross_source: bool,
) -> PreferenceExport:
    stage = "preference"
    result = PreferenceExport()
    quarantined: dict[int, tuple[str, bytes]] = {}  # input index -> (reason, JSON line)
    pending: list[Row] = []
    seen: dict[RowKey, str] = {}
    sources: dict[int, tuple[str, str | None]] = {}

    for i, item in enumerate(items):
        if isinstance(item, Broken):
            quarantined[i] = _line(quarantine_broken(stage, item))
            sources[i] = (item.source, None)
            continue
        j = item
        sources[i] = (j.source, j.scored.category.value)
        ev = j.evidence
        drop: tuple[QuarantineReason, str] | None = None
        refusal = refuse_category(ExportKind.PREFERENCE, j.scored.category)
        if refusal is not None:
            drop = (refusal.reason, refusal.message)
        elif not has_instruction_shape(ev, j.scored.score_class):
            drop = (QuarantineReason.CATEGORY_DISALLOWED,
                    f"{ev.source} is extraction-class: no prompt -> response shape to prefer")
        elif not ev.text.strip():
            drop = (QuarantineReason.EMPTY_CONTENT, "evidence text is empty")
        elif j.key in seen:
            drop = (QuarantineReason.DUPLICATE_ID, f"run {ev.run_id} revision already read at {seen[j.key]}")
        if drop is not None:
            quarantined[i] = _line(quarantine_joined(stage, j, drop[0], [drop[1]]))
            continue
        seen[j.key] = f"{j.scored_file}:{j.scored_line}"
        pending.append(Row(i, j, synthesize_instruction(ev)))

    verdicts = firewall.check(
        [GateInput((r.prompt, r.text), tuple(r.joined.evidence.source_files), (meta_text(r.joined.evidence),))
         for r in pending]
    )
    eligible: list[Row] = []
    for row, failure in zip(pending, verdicts, strict=True):
        if failure is not None:
            quarantined[row.index] = _line(quarantine_joined(stage, row.joined, failure.reason, failure.errors))
        else:
            eligible.append(row)

    # A pair compares two answers to the same question: rows are grouped by task and by the
    # instruction they answered (an audit task holds findings about different files and topics;
    # preferring one finding over another would teach severity, not quality).
    pairer = _Pairer(existing_ids, existing_per_task, max_pairs_per_task)
    by_question: dict[tuple[str, str], list[Row]] = {}
    for row in eligible:
        by_question.setdefault((row.joined.evidence.task_id, row.prompt), []).append(row)
    for task_id, prompt in sorted(by_question):
        rows = by_question[(task_id, prompt)]
        acc = _sorted(r for r in rows if r.category is Category.ACCEPTED)
        rej = _sorted(r for r in rows if r.category is Category.REJECTED)
        part = _sorted(r for r in rows if r.category is Category.PARTIALLY_ACCEPTED)
        pairs = _spread(acc, rej) + _spread(acc, part)
        result.pairs_same_task += pairer.offer(pairs, task_id=task_id, pairing="same_task", prompt_of=None)

    if cross_source:
        # Across sources and tasks, still only answers to one and the same instruction, and only
        # verdict-bearing reviews (an observer's text judges another run, not the question).
        by_prompt: dict[str, list[Row]] = {}
        for row in eligible:
            if row.joined.scored.score_class is ScoreClass.VERDICT and row.joined.evidence.model_role in _REVIEW_ROLES:
                by_prompt.setdefault(row.prompt, []).append(row)
        for prompt in sorted(by_prompt):
            rows = by_prompt[prompt]
            acc = _sorted(r for r in rows if r.category is Category.ACCEPTED)
            rej = _sorted(r for r in rows if r.category is Category.REJECTED)
            pairs = [
                (c, r) for c, r in _spread(acc, rej)
                if c.joined.evidence.source != r.joined.evidence.source
                and c.joined.evidence.task_id != r.joined.evidence.task_id
            ]
            result.pairs_cross_source += pairer.offer(pairs, task_id=cross_task_id(prompt), pairing="cross_source",
                                                      prompt_of=prompt)

    for row in eligible:
        source, category = sources[row.index]
        if row.key in pairer.in_new:
            report.source(source).bump("written", category=category)
        elif row.key in pairer.in_existing:
            report.source(source).bump("deduped", category=category)
        else:
            reason, msg = pairer.why.get(
                row.key,
                (QuarantineReason.INVALID_PREFERENCE_PAIRING,
                 f"no counterpart with a category gap in task {row.joined.evidence.task_id}"),
            )
            quarantined[row.index] = _line(quarantine_joined(stage, row.joined, reason, [msg]))
    for i, (reason_value, _) in quarantined.items():
        source, category = sources[i]
        report.source(source).bump("quarantined", reason=reason_value, category=category)

    result.sample_lines = pairer.new
    result.quarantine_lines = [quarantined[i][1] for i in sorted(quarantined)]
    result.pairs_existing = len(existing_ids)
    return result
