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

Pairing needs every row of a question before it can choose, so rows cannot stream straight
through. Memory stays bounded by spilling (`distill.export.spill`): pass 1 gates the rows in
batches and writes each one to a bucket by task id (what a pair or a quarantine line needs of
it to a payload file, a small `Row` to the bucket); each task bucket is then paired on its own, cross-source candidates are
re-bucketed by question and paired the same way, and the pairs (in question order) and the
quarantine rows (in input order) come out of a k-way merge of the buckets' sorted runs. The
output is the same bytes whatever the number of buckets.

What pass 1 makes of a scored line depends only on the line, its evidence and the export basis,
so it is kept per scored partition in the export checkpoint (`distill.export.checkpoints`, the
RAG/SFT mechanism): after an append, the unchanged prefix of each partition is replayed from its
entries (no JSON parse, join, validation or gate) and only the appended lines are read. With the
last run's decisions (`distill.export.kept_decisions`), a replayed row of a group no change
touched is not even spilled: its decision and quarantine line are last run's, and only the rows
of dirty groups (or of whole tasks under their cap) are read back from the checkpoint and paired.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from distill.checkpoint_file import Entries, JsonEntries
from distill.export.checkpoints import PartitionExporter, entries_json
from distill.export.exported import Ids, PairsPerTask, PerTask
from distill.export.gates import REJUDGED_REASONS, Firewall, GateInput, meta_text
from distill.export.kept_decisions import (
    CHOSEN,
    OPPOSITE,
    KeptDecisions,
    KeptLines,
    KeptRows,
    NextDecisions,
    appended_groups,
    dirty_rows,
    pairable_questions,
)
from distill.export.pair_grid import Grid
from distill.export.passed_gates import PassedGates, input_digest
from distill.export.quarantine import (
    GATE_BATCH,
    QuarantineLines,
    joined_detail,
    quarantine_broken,
    quarantine_joined,
    quarantine_scored,
    scored_quarantine_line,
    validation_errors,
)
from distill.export.reader import Broken, Joined, ReaderItem
from distill.export.sft import has_instruction_shape, synthesize_instruction
from distill.export.scored_index import key_digest
from distill.export.spill import IN_ORDER_BATCH, RecordFile, Spill, bucket_of, merge_sorted
from distill.errors import UsageError
from distill.firewall import ExportKind, refuse_category
from distill.hashing import content_id
from distill.jsonl import dumps
from distill.records import (
    Category,
    ModelRole,
    PreferenceSample,
    QuarantineReason,
    QuarantineRecord,
    ScoreClass,
    SourceRef,
)
from distill.records.common import is_blank_text
from distill.records.stage import StageReport, Tally, TallyKey

_REVIEW_ROLES = frozenset({ModelRole.REVIEWER, ModelRole.EXECUTOR})
# a same-task grid: accepted rows against rejected ones, then against partially accepted ones
_GRID_CHOSEN, _GRID_REJECTED = Category.ACCEPTED, (Category.REJECTED, Category.PARTIALLY_ACCEPTED)
_SIDE_OF = {_GRID_CHOSEN: CHOSEN, **{category: OPPOSITE for category in _GRID_REJECTED}}
STAGE = "preference"
RowKey = tuple[str, str]  # (run_id, sig_hash)
Reason = tuple[QuarantineReason, str]
EvidenceText = Callable[[str, RowKey], "str | None"]  # (scored file, key) -> the text of its evidence
LineSink = Callable[[bytes], None]
Reread = Callable[[str], "list[Any] | None"]  # scored partition -> its checkpoint's entries, as replayed


class PreferencePass(PartitionExporter, Protocol):
    """The first pass as `read_rows` drives it: each partition named before its rows go through."""

    def start_partition(self, rel: str) -> None: ...


def pref_id(chosen: RowKey, rejected: RowKey) -> str:
    return content_id("pref", chosen[0], rejected[0], chosen[1], rejected[1])


def cross_task_id(prompt: str) -> str:
    """The task id of a cross-source pair: the question both sides answered."""
    return content_id("question", prompt)


def _text_digest(text: str) -> bytes:
    """Stands for the stripped text in the identical-texts check, so a Row stays small."""
    return hashlib.blake2b(text.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(slots=True)
class Row:
    """What pairing needs of a row; what a pair or its quarantine line needs waits in the payload
    file at `offset` (a `Spilled`). Never changed once made, yet not a frozen dataclass: building
    one costs ~2 us frozen (a setattr per field) against ~0.3 us, and a run builds two per row."""

    index: int
    key: RowKey
    task_id: str
    prompt: str
    category: Category
    source: str
    text_digest: bytes
    cross_candidate: bool  # verdict-bearing review: may pair across sources
    failure: tuple[str, list[str]] | None  # the firewall's verdict
    offset: int

    def as_tuple(self) -> tuple[object, ...]:
        return (self.index, self.key, self.task_id, self.prompt, self.category, self.source, self.text_digest,
                self.cross_candidate, self.failure, self.offset)


@dataclass(slots=True)
class Fate:
    """A row's standing after a pairing phase (the same fields the final decision reads); one per
    row and phase, so not frozen either (see Row)."""

    in_new: bool = False
    in_existing: bool = False
    why: Reason | None = None


@dataclass
class PreferenceExport:
    pairs_same_task: int = 0
    pairs_cross_source: int = 0
    pairs_existing: int = 0
    lines_replayed: int = 0  # scored lines whose pass-1 outcome came from a checkpoint
    rows_kept: int = 0  # rows whose decision was the last run's (their task unchanged)
    decisions: NextDecisions | None = None  # every row's, for the next run
    # rows the gates refused in this run for a reason that also holds against rows already
    # shipped (gates.REJUDGED_REASONS), with (reason, errors): a pair the export holds may use one
    # (a benchmark file added since, a stricter setting), see run_export
    refused_by_gates: dict[RowKey, tuple[str, list[str]]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Spilled:
    """What a pair or a quarantine line needs of a joined row: plain values (strings, not a
    datetime or an enum: pickling an aware datetime costs several times a string), so spilling
    it costs a fraction of pickling the row's records."""

    key: RowKey
    evidence_source: str
    text: str | None  # None: a row replayed from a checkpoint; its evidence mirror has it (`_Payload.with_text`)
    created_at: str  # ISO 8601, as the checkpoint keeps it
    provenance: dict[str, Any]  # Provenance in its JSON form: a model would cost more to spill
    category: str  # Category value
    first_reason: str
    scored_source: str
    detail: dict[str, Any]  # the quarantine row's detail (joined_detail)

    @classmethod
    def of(cls, j: Joined) -> tuple[object, ...]:
        ev, sc = j.evidence, j.scored
        return (j.key, ev.source, ev.text, ev.created_at.isoformat(), ev.provenance.model_dump(mode="json"),
                sc.category.value,
                sc.reasons[0], j.source,
                joined_detail(j))

    def quarantine(self, reason: QuarantineReason | str, errors: list[str]) -> QuarantineRecord:
        p = self.provenance
        ref = SourceRef(source_file=p["source_file"], line_offset=p["line_offset"], line_number=p["line_number"],
                        sig_hash=p["sig_hash"])
        return quarantine_scored(STAGE, self.scored_source, ref, self.detail, reason,
                                 errors, self.key[0])

    def quarantine_line(self, reason: QuarantineReason | str, errors: list[str]) -> bytes:
        """The JSON line of `quarantine(reason, errors)`, built without the models."""
        return scored_quarantine_line(STAGE, self.scored_source, self.provenance, self.detail, reason, errors,
                                      self.key[0])


def _where(detail: dict[str, Any]) -> str:
    """scored_file:line of a row (its quarantine detail has both), named when a later duplicate
    is refused; read back from the payload then, so a row held for pairing does not carry it."""
    return f"{detail['scored_file']}:{detail.get('scored_line')}"


def _build(c: Spilled, r: Spilled, *, task_id: str, pairing: str, prompt: str) -> PreferenceSample:
    reason = (
        f"chosen {c.evidence_source} run scored {c.category} ({c.first_reason}); "
        f"rejected {r.evidence_source} run scored {r.category} ({r.first_reason})"
    )
    return PreferenceSample(
        id=pref_id(c.key, r.key),
        prompt=prompt,
        chosen=c.text,
        rejected=r.text,
        chosen_run_id=c.key[0],
        rejected_run_id=r.key[0],
        chosen_category=Category(c.category),
        rejected_category=Category(r.category),
        task_id=task_id,
        pairing=pairing,  # type: ignore[arg-type]
        reason=reason,
        created_at=max(datetime.fromisoformat(c.created_at), datetime.fromisoformat(r.created_at)),
        chosen_provenance=c.provenance,
        rejected_provenance=r.provenance,
    )


class _Payload:
    """The spilled rows, read back by offset (only for rows that make a pair or a quarantine line).

    A replayed row's text is not spilled: only a new pair needs it (a few rows per append), so it
    is read then from the row's evidence mirror, whose prefix the checkpoint proved unchanged."""

    def __init__(self, records: RecordFile, evidence_text: EvidenceText) -> None:
        self.records = records
        self.evidence_text = evidence_text

    def put(self, spilled: tuple[object, ...]) -> int:
        """`Spilled.of(joined)`, or the same values from a checkpoint."""
        return self.records.append(spilled)

    def get(self, row: Row) -> Spilled:
        return Spilled(*self.records.read_at(row.offset))

    def with_text(self, row: Row) -> Spilled:
        spilled = self.get(row)
        if spilled.text is not None:
            return spilled
        text = self.evidence_text(str(spilled.detail["scored_file"]), spilled.key)
        if text is None:
            raise UsageError(f"the evidence of run {spilled.key[0]} is not where the preference export checkpoint "
                             f"says; `distill run --force` starts the exports from their inputs")
        return dataclasses.replace(spilled, text=text)


_IDENTICAL_TEXTS: Reason = (QuarantineReason.INVALID_PREFERENCE_PAIRING, "chosen and rejected texts are identical")


class _Pairer:
    """Pair selection for one bucket, with the per-task cap and the reasons rows end up unpaired.

    A task's groups all fall in one bucket (a cross-source question's in one cross bucket), so
    the cap is counted per bucket without losing a pair made elsewhere."""

    def __init__(self, existing_ids: Ids, existing_per_task: PerTask, cap: int, payload: _Payload,
                 pairs: RecordFile) -> None:
        self.existing_ids = existing_ids
        self.existing_per_task = existing_per_task
        self.made_per_task: Counter[str] = Counter()
        self.cap = cap
        self.payload = payload
        self.pairs = pairs  # (sort key, JSON line) in pairing order
        # each row's standing, by input index (sets and a map rather than an object per row: a
        # task holding most of the rows gives nearly every row a reason once its cap is reached)
        self.used_new: set[int] = set()
        self.used_existing: set[int] = set()
        self.why: dict[int, Reason] = {}
        self._cap_reached: dict[str, Reason] = {}

    def fate(self, index: int) -> Fate:
        return Fate(index in self.used_new, index in self.used_existing, self.why.get(index))

    def fates(self) -> dict[int, Fate]:
        """The standing of every row this pairer gave one."""
        return {i: self.fate(i) for i in sorted(self.used_new | self.used_existing | self.why.keys())}

    def use(self, rows: tuple[Row, Row], *, new: bool) -> None:
        (self.used_new if new else self.used_existing).update(row.index for row in rows)

    def _note(self, rows: tuple[Row, Row], why: Reason) -> None:
        for row in rows:
            self.why.setdefault(row.index, why)

    def _full(self, task_id: str) -> bool:
        return self.existing_per_task[task_id] + self.made_per_task[task_id] >= self.cap

    def _refusal(self, chosen: Row, rejected: Row, task_id: str) -> Reason | None:
        """Why a pair that was not exported earlier cannot be made now (None: try to build it)."""
        if chosen.key[0] == rejected.key[0]:
            return (QuarantineReason.SELF_PAIRING, f"only counterpart is another revision of run {chosen.key[0]}")
        if chosen.text_digest == rejected.text_digest:
            return _IDENTICAL_TEXTS
        if self._full(task_id):
            return self._cap_reason(task_id)
        return None

    def _cap_reason(self, task_id: str) -> Reason:
        found = self._cap_reached.get(task_id)
        if found is None:  # one tuple per task: once the cap is reached, most rows hold it
            found = self._cap_reached[task_id] = (QuarantineReason.INVALID_PREFERENCE_PAIRING,
                                                  f"{task_id} already has {self.cap} pairs (max_pairs_per_task)")
        return found

    def refuse_appended(self, rows: list[Row], *, task_id: str) -> None:
        """The new rows of a group of a capped task whose old rows keep their decisions
        (`kept_decisions.appended_groups`): no row across shares a run or a text with any of them
        and both sides hold an old row, so every pair the grid offers them is refused for the cap,
        whatever its order, and each new row on a side has one."""
        if not self._full(task_id):
            raise RuntimeError(f"{task_id} was taken as capped but is not")
        why = self._cap_reason(task_id)
        for row in rows:
            if row.category in _SIDE_OF:
                self.why.setdefault(row.index, why)

    def offer(self, chosen: list[Row], rejected_groups: list[list[Row]], *, task_id: str, pairing: str,
              prompt_of: str | None, sort_key: tuple[str, ...], differ: Sequence[Callable[[Row], str]] = ()) -> int:
        """Offer chosen x each rejected group in spread order (`pair_grid`), the groups one after
        another, only pairs whose rows differ in every `differ` key; take valid pairs until the
        task's cap. Returns how many new pairs."""
        grids: list[Grid[Row]] = []
        for rejected in rejected_groups:
            grids.append(Grid(chosen, rejected, offset=grids[-1].end if grids else 0, differ=differ))
        made = 0
        existing = self.existing_ids
        # pairs exported by an earlier run are kept first (they already count against the cap);
        # the pairs offered are distinct, so only an earlier run's ids can repeat one. The export
        # holds existing_per_task[task_id] of them at most: once that many are found, no later
        # pair needs hashing
        kept: set[int] = set()
        to_find = self.existing_per_task[task_id] if existing else 0
        if to_find:
            for n, c, r in itertools.chain.from_iterable(grids):
                if pref_id(c.key, r.key) in existing:
                    self.use((c, r), new=False)
                    kept.add(n)
                    to_find -= 1
                    if not to_find:
                        break
        last_kept = max(kept, default=-1)
        walked = -1  # the last position taken one pair at a time
        for n, c, r in itertools.chain.from_iterable(grids):
            if n > last_kept and self._full(task_id):
                # every pair from here on is refused and only tells its rows why: ask each row
                # for its first one instead of walking them all
                self._note_rest(grids, task_id, after=walked)
                return made
            walked = n
            if n in kept:
                continue
            refusal = self._refusal(c, r, task_id)
            if refusal is not None:
                self._note((c, r), refusal)
                continue
            prompt = prompt_of if prompt_of is not None else c.prompt
            try:
                sample = _build(self.payload.with_text(c), self.payload.with_text(r), task_id=task_id,
                                pairing=pairing, prompt=prompt)
            except ValidationError as exc:
                self._note((c, r), (QuarantineReason.SCHEMA_VIOLATION, "; ".join(validation_errors(exc))))
                continue
            self.pairs.append((sort_key, dumps(sample.model_dump(mode="json"))))
            self.use((c, r), new=True)
            self.made_per_task[task_id] += 1
            made += 1
        return made

    def _note_rest(self, grids: list[Grid[Row]], task_id: str, *, after: int) -> None:
        """What walking every pair after position `after` would note, the cap being reached (no
        pair there is kept or built): a row without a reason takes that of its first such pair."""
        for i, row in enumerate(grids[0].chosen if grids else []):
            self._note_first(row, (p for g in grids for p in g.after_chosen(i, after)), task_id)
        for grid in grids:
            for j, row in enumerate(grid.rejected):
                self._note_first(row, grid.after_rejected(j, after), task_id)

    def _note_first(self, row: Row, later: Iterator[tuple[int, Row, Row]], task_id: str) -> None:
        if row.index in self.why:
            return
        first = next(later, None)
        if first is not None:
            _, c, r = first
            why = self._refusal(c, r, task_id)
            if why is not None:
                self.why[row.index] = why


# A decided row on its way to the report and the quarantine file, ordered by input index:
# (index, source, category or None, reason or None for a row a pair used, JSON line or b"", deduped?)
Decided = tuple[int, str, str | None, str | None, bytes, bool]


def _quarantined(index: int, source: str, category: str | None, rec: QuarantineRecord) -> Decided:
    return _quarantined_line(index, source, category, rec.reason.value, dumps(rec.to_json_dict()))


def _quarantined_line(index: int, source: str, category: str | None, reason: str, line: bytes) -> Decided:
    return (index, source, category, reason, line, False)


# A pass-1 checkpoint entry (JSON, one per scored line, in line order): what reading the line gave.
#   ["q", source, category | None, reason, quarantine line]     refused before pairing
#   ["r", run_id, sig_hash, task_id, prompt, category, source, text digest (hex), cross candidate,
#    where, firewall failure [reason, errors] | None, digest of the gate input that passed (hex) | None,
#    [evidence source, created_at (ISO), provenance (JSON), first reason, quarantine detail]]
# (not the text: a pair that needs it reads it from the evidence mirror, see `_Payload`)
Pass1Entry = list[Any]
_Ready = tuple[str, tuple[Any, ...], tuple[Any, ...] | None, bytes | None]


def _row_entry(row: Row, spilled: tuple[Any, ...], passed: bytes | None) -> Pass1Entry:
    _key, ev_source, _text, created_at, provenance, _category, first_reason, _source, detail = spilled
    return ["r", row.key[0], row.key[1], row.task_id, row.prompt, row.category.value, row.source,
            row.text_digest.hex(), row.cross_candidate, _where(detail),
            None if row.failure is None else [row.failure[0], row.failure[1]],
            None if passed is None else passed.hex(),
            [ev_source, created_at, provenance, first_reason, detail]]


def _provenance(value: Any) -> dict[str, Any]:
    """A checkpoint's provenance in its JSON form: what `Spilled.of` wrote from a validated
    Provenance (the entries' digest says they are the bytes written, so it is not validated
    again: that was ~7 us a row, most of what replaying a partition cost), with the fields a
    quarantine row takes from it."""
    if not (isinstance(value, dict) and isinstance(value.get("source_file"), str) and value["source_file"]
            and all(type(value.get(k)) is int for k in ("line_offset", "line_number"))
            and isinstance(value.get("sig_hash"), str)):
        raise TypeError("malformed provenance")
    return value


def _parse_entry(entry: Any) -> _Ready:
    """An entry back into what reading its line gave; raises ValueError/TypeError/ValidationError
    on anything a checkpoint never holds (the checks a reader of our own bytes still wants: the
    shape of each field)."""
    code = entry[0]
    if code == "q":
        _, source, category, reason, line = entry
        if not (isinstance(source, str) and isinstance(reason, str) and isinstance(line, str)
                and (category is None or isinstance(category, str))):
            raise TypeError("malformed entry")
        return ("q", (source, category, reason), None, line.encode("utf-8"))
    if code != "r" or len(entry) != 13:
        raise TypeError("malformed entry")
    (_, run_id, sig, task_id, prompt, category, source, digest, cross, where, failure, passed, spilled) = entry
    ev_source, created_at, provenance, first_reason, detail = spilled
    strings = (run_id, sig, task_id, prompt, source, where, ev_source, first_reason)
    if not (all(isinstance(v, str) for v in strings) and isinstance(cross, bool) and isinstance(detail, dict)
            and isinstance(detail.get("scored_file"), str) and where == _where(detail)):
        raise TypeError("malformed entry")
    if failure is not None:
        reason, errors = failure
        if not (isinstance(reason, str) and isinstance(errors, list) and all(isinstance(e, str) for e in errors)):
            raise TypeError("malformed entry")
        failure = (reason, errors)
    cat = Category(category)
    row = (run_id, sig, task_id, prompt, cat, source, bytes.fromhex(digest), cross, failure)
    if not isinstance(created_at, str):
        raise TypeError("malformed entry")
    payload = ((run_id, sig), ev_source, None, created_at, _provenance(provenance), cat.value, first_reason, source,
               detail)
    return ("r", row, payload, None if passed is None else bytes.fromhex(passed))


class _Pass1:
    """Reads the rows once, a scored partition at a time (`export_partition` drives it): refusals
    are decided at once, the rest are gated and spilled.

    With `record`, what each line gave is kept as a `Pass1Entry` and handed over per partition (a
    checkpoint); `replay` takes a partition's entries instead of reading its lines. A line's
    entry depends only on the line, its evidence and the export basis (never on other rows or on
    the export: pairing decides everything else), so replayed entries give the rows a read would."""

    def __init__(self, firewall: Firewall | PassedGates, payload: _Payload, early: RecordFile,
                 buckets: list[RecordFile], *, record: bool, decisions: NextDecisions, cross_source: bool,
                 kept: KeptDecisions | None = None) -> None:
        self.firewall = firewall
        self.payload = payload
        self.early = early  # Decided rows, in input order
        self.buckets = buckets
        self.record = record
        self.decisions = decisions  # every row's task, question and gate digest, by input index
        self.cross_source = cross_source
        self.kept = kept
        self.batch: list[tuple[int, Joined, str]] = []
        self._next = 0  # input index of the next line
        self._entries = JsonEntries()  # this partition's, as JSON until its checkpoint is written
        self._ready: list[_Ready] = []  # the entries can_replay parsed last
        self.replayed = 0  # lines taken from checkpoints
        self._rel: str | None = None  # the scored partition being read (start_partition)
        self._position = 0  # its rows so far
        self._part_start = 0
        # replayed rows with kept decisions, not spilled (yet): (partition, first index, first position, rows)
        self.deferred: list[tuple[str, int, int, int]] = []
        self.matched = np.zeros(kept.count if kept is not None else 0, dtype=bool)  # kept rows replayed as they were
        self.rows_kept = 0  # deferred rows of clean tasks: last run's decision stands
        # (task, prompt) digests of the groups whose old rows keep their decisions while their new
        # rows are decided apart (`settle`, `_Pairer.refuse_appended`)
        self.appended: set[tuple[bytes, bytes]] = set()

    def start_partition(self, rel: str) -> None:
        """The rows after this belong to the scored partition `rel` (so a row's kept decision is
        found by its partition and position)."""
        self._end_part()
        self._rel, self._position, self._part_start = rel, 0, self._next

    def _end_part(self) -> None:
        if self._rel is not None:
            self.decisions.parts.append((self._rel, self._next - self._part_start))
            self._rel = None

    def _defers(self, n: int) -> bool:
        return self.kept is not None and self._rel is not None and self.kept.eligible(self._rel, self._position, n)

    def _refuse(self, index: int, decided: Decided) -> None:
        self.early.append(decided)
        self.decisions.row(index, None, None, asks=False, passed=None)
        if self.record:
            _, source, category, reason, line, _ = decided
            self._entries.add(index, ["q", source, category, reason, line.decode("utf-8")])

    def feed(self, item: ReaderItem) -> None:
        i = self._next
        self._next += 1
        self._position += 1
        if isinstance(item, Broken):
            self._refuse(i, _quarantined(i, item.source, None, quarantine_broken(STAGE, item)))
            return
        j = item
        ev = j.evidence
        drop: Reason | None = None
        refusal = refuse_category(ExportKind.PREFERENCE, j.scored.category)
        if refusal is not None:
            drop = (refusal.reason, refusal.message)
        elif not has_instruction_shape(ev, j.scored.score_class):
            drop = (QuarantineReason.CATEGORY_DISALLOWED,
                    f"{ev.source} is extraction-class: no prompt -> response shape to prefer")
        elif is_blank_text(ev.text):
            drop = (QuarantineReason.EMPTY_CONTENT, "evidence text is empty")
        if drop is not None:
            self._refuse(i, _quarantined(i, j.source, j.scored.category.value,
                                         quarantine_joined(STAGE, j, drop[0], [drop[1]])))
            return
        # a duplicate revision is refused when its bucket is read (both copies share a task id);
        # gating it too costs a scan and changes no verdict (the gates judge each row alone)
        self.batch.append((i, j, synthesize_instruction(ev)))
        if len(self.batch) >= GATE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        gate_inputs = [GateInput((prompt, j.evidence.text), tuple(j.evidence.source_files), (meta_text(j.evidence),))
                       for _, j, prompt in self.batch]
        verdicts = self.firewall.check(gate_inputs)
        for (i, j, prompt), gate, failure in zip(self.batch, gate_inputs, verdicts, strict=True):
            ev = j.evidence
            spilled = Spilled.of(j)
            row = Row(
                index=i, key=j.key, task_id=ev.task_id, prompt=prompt, category=j.scored.category,
                source=j.source, text_digest=_text_digest(ev.text),
                cross_candidate=j.scored.score_class is ScoreClass.VERDICT and ev.model_role in _REVIEW_ROLES,
                failure=None if failure is None else (failure.reason, failure.errors),
                offset=self.payload.put(spilled),
            )
            self.buckets[bucket_of(row.task_id, len(self.buckets))].append(row.as_tuple())
            passed = input_digest(gate) if failure is None else None
            self.decisions.row(i, row.task_id, prompt, asks=row.cross_candidate and self.cross_source, passed=passed,
                               answer=(row.source, row.category.value),
                               grid=(row.key[0], row.text_digest, _SIDE_OF.get(row.category, 0)))
            if self.record:
                self._entries.add(i, _row_entry(row, spilled, passed))
        self.batch.clear()

    def end_partition(self) -> Entries | None:
        """Every line read so far is spilled; the entries of the lines since the last call."""
        self.flush()
        entries = self._entries.take()
        return entries if self.record else None

    def close(self) -> None:
        self._end_part()
        self._entries.close()

    def can_replay(self, entries: Sequence[Pass1Entry]) -> bool:
        """Whether every entry is one this class writes (a damaged checkpoint is read as none).
        Entries with kept decisions are only looked at here: the ones a dirty group needs are
        parsed when they are read back (`settle`)."""
        if self._defers(len(entries)):
            self._ready = []  # not parsed: the entries' digest says they are the bytes written
            return True
        try:
            self._ready = [_parse_entry(e) for e in entries]
        except (ValueError, TypeError, KeyError, IndexError, ValidationError):
            self._ready = []
            return False
        return True

    def replay(self, entries: Sequence[Pass1Entry], *, record: bool = True) -> None:
        """The lines these entries stand for (can_replay parsed them), in input order; `record=False`:
        their entries are not handed over again (the partition's checkpoint is kept as it is)."""
        self.flush()
        n = len(entries)
        if self._defers(n):
            assert self.kept is not None and self._rel is not None
            first = self.kept.first_row(self._rel) + self._position
            self.deferred.append((self._rel, self._next, self._position, n))
            self.matched[first:first + n] = True
            self.decisions.kept_rows(self._next, self.kept, slice(first, first + n))
            if self.record and record:  # copied as written: a kept row's entry is never parsed
                for k, data in enumerate(entries_json(entries)):
                    self._entries.add_json(self._next + k, data)
            self._next += n
            self._position += n
            self.replayed += n
            return
        ready, self._ready = self._ready, []
        for data, parsed in zip(entries_json(entries) if self.record and record else itertools.repeat(None, n), ready,
                                strict=True):
            self._spill(self._next, parsed, self.buckets)
            if data is not None:
                self._entries.add_json(self._next, data)
            self._next += 1
        self._position += n
        self.replayed += n

    def _spill(self, i: int, parsed: _Ready, buckets: list[RecordFile]) -> None:
        """A row replayed from its entry, at input index `i`."""
        code, fields, spilled, extra = parsed
        if code == "q":
            assert extra is not None
            self.early.append((i, *fields, extra, False))
            self.decisions.row(i, None, None, asks=False, passed=None)
            return
        assert spilled is not None
        # Row.as_tuple() of the row, without making the Row: (index, key, task id, ..., offset)
        row = (i, (fields[0], fields[1]), *fields[2:], self.payload.put(spilled))
        buckets[bucket_of(fields[2], len(buckets)) if len(buckets) > 1 else 0].append(row)
        self.decisions.row(i, fields[2], fields[3], asks=fields[7] and self.cross_source, passed=extra,
                           answer=(fields[5], fields[4].value), grid=(fields[0], fields[6], _SIDE_OF.get(fields[4], 0)))
        if extra is not None and isinstance(self.firewall, PassedGates):
            self.firewall.passed_before([extra])

    def _note_appended(self, tasks: np.ndarray, prompts: np.ndarray, new: np.ndarray, spread: np.ndarray) -> None:
        """The groups of `new` rows (of `appended_groups`) that no old row of went dirty through a
        question or a whole task (`spread`): those are the groups `refuse_appended` decides."""
        pairs = set(zip(tasks[new].tolist(), prompts[new].tolist(), strict=True))
        pairs -= set(zip(tasks[spread].tolist(), prompts[spread].tolist(), strict=True))
        task_digests, prompt_digests = self.decisions.tasks.digest_list(), self.decisions.prompts.digest_list()
        self.appended = {(task_digests[t], prompt_digests[p]) for t, p in pairs}

    def settle(self, reread: Reread, late: list[RecordFile], *,
               capped: Callable[[list[bytes]], np.ndarray]) -> KeptRows | None:
        """After every partition went through: the deferred rows of dirty groups are read back from
        their checkpoint entries and spilled to `late` (same buckets, input order); the others keep
        last run's decisions, returned as one set (the final merge takes them in bulk:
        `KeptDecisions.counts`, `KeptLines`). `capped`: for task digests, whether the export holds
        the cap."""
        kept = self.kept
        if kept is None or not self.deferred:
            return None
        d = self.decisions
        tasks, prompts = d.task_codes(), d.prompt_codes()
        deferred = np.zeros(len(tasks), dtype=bool)
        in_grid = np.zeros(len(tasks), dtype=bool)
        kept_in_grid, kept_gated = kept.in_grid(), kept.gated()
        for rel, first, position, n in self.deferred:
            deferred[first:first + n] = True
            kept_first = kept.first_row(rel) + position
            in_grid[first:first + n] = kept_in_grid[kept_first:kept_first + n]
        rows = kept.rows
        unmatched = ~self.matched
        is_capped = capped(d.tasks.digest_list())
        run, text, side = d.grid_columns()
        appended = appended_groups(tasks, prompts, prompt_count=len(d.prompts), new=~deferred, capped=is_capped,
                                   changed=(rows["task"][unmatched], rows["prompt"][unmatched]),
                                   run=run[:len(tasks)], text=text[:len(tasks)], side=side[:len(tasks)],
                                   in_grid=in_grid)
        seeds = ~deferred & ~appended
        dirty = dirty_rows(tasks, prompts, d.question_codes(), capped=is_capped,
                           prompt_count=len(d.prompts),
                           seed_groups=(np.concatenate((tasks[seeds], rows["task"][unmatched])),
                                        np.concatenate((prompts[seeds], rows["prompt"][unmatched]))),
                           seed_tasks=rows["task"][kept.unsettled()], seed_questions=rows["question"][unmatched],
                           pairable=pairable_questions(kept, d.answers or [], question_count=len(d.prompts)),
                           seed_rows=~deferred & appended)
        self._note_appended(tasks, prompts, appended & ~deferred, spread=appended & deferred & dirty)
        clean_indexes: list[np.ndarray] = []
        clean_rows: list[np.ndarray] = []
        passed: list[np.ndarray] = []
        entries: list[Any] | None = None
        entries_of: str | None = None
        for rel, first, position, n in self.deferred:
            is_dirty = dirty[first:first + n]
            kept_first = kept.first_row(rel) + position
            clean = np.flatnonzero(~is_dirty)
            if len(clean):
                self.rows_kept += len(clean)
                clean_indexes.append(first + clean)
                kept_at = kept_first + clean
                clean_rows.append(kept_at)
                passed.append(kept.passed[kept_at[kept_gated[kept_at]]])
            redo = np.flatnonzero(is_dirty).tolist()
            if not redo:
                continue
            if entries_of != rel:
                entries, entries_of = reread(rel), rel
            if entries is None or len(entries) < position + n:
                raise UsageError(f"the preference export checkpoint of {rel} changed while it was read; "
                                 f"`distill run --force` starts the exports from their inputs")
            for k in redo:
                try:
                    parsed = _parse_entry(entries[position + k])
                except (ValueError, TypeError, KeyError, IndexError, ValidationError) as exc:
                    raise UsageError(f"the preference export checkpoint of {rel} holds an entry it never writes "
                                     f"({exc}); `distill run --force` starts the exports from their inputs") from exc
                self._spill(first + k, parsed, late)
        if passed and isinstance(self.firewall, PassedGates):
            self.firewall.passed_before([a.tobytes() for a in passed if len(a)])
        if not clean_indexes:
            return None
        return KeptRows(np.concatenate(clean_indexes).astype(np.int64), np.concatenate(clean_rows).astype(np.int64))


def _row(t: tuple[Any, ...], shared: dict[str, str]) -> Row:
    """A spilled row back, sharing its task-id, prompt and source strings with the rows before it
    (unpickled, each row would carry its own copies: a task with most of the rows held them all)."""
    index, key, task_id, prompt, category, source, *rest = t
    return Row(index, key, shared.setdefault(task_id, task_id), shared.setdefault(prompt, prompt), category,
               shared.setdefault(source, source), *rest)


def _rows(bucket: Iterable[tuple[Any, ...]]) -> Iterator[Row]:
    """The task bucket's rows in input order."""
    shared: dict[str, str] = {}
    return (_row(t, shared) for t in bucket)


CrossHeld = tuple[tuple[Any, ...], tuple[Any, ...]]  # (Row.as_tuple(), same-task Fate fields), as spilled


def _standing(fate: tuple[Any, ...], known: dict[tuple[Any, ...], Fate]) -> Fate:
    """A spilled same-task standing; equal standings share one Fate (most rows hold one of a few:
    no pair, or their task's cap reached)."""
    found = known.get(fate)
    if found is None:
        found = known[fate] = Fate(*fate)
    return found


def _cross_stream(parts: list[RecordFile]) -> Iterator[CrossHeld]:
    """A cross bucket in input order: each task bucket passed its candidates on in input order, to
    its own part, so the parts merge without a sort."""
    return merge_sorted(parts, key=lambda held: held[0][0])


_TWO_SOURCES, _TWO_TASKS, _ACCEPTED, _REJECTED = 1, 2, 4, 8
_CAN_PAIR = _TWO_SOURCES | _TWO_TASKS | _ACCEPTED | _REJECTED


def _questions_that_can_pair(held: Iterable[CrossHeld]) -> set[bytes]:
    """The questions (by prompt digest) with an accepted and a rejected answer, more than one source
    and more than one task among them: a cross-source pair needs rows of different sources and
    tasks, so no other question has one, and its rows need not be held while the others pair.
    Per question it keeps its first source and task and what it has seen as bits."""
    seen: dict[bytes, tuple[str, str, int]] = {}
    sources: dict[str, str] = {}  # one copy of each source name (a bucket has few)
    for t, _ in held:
        _, _, task_id, prompt, category, source, *_ = t
        if category is Category.ACCEPTED:
            bit = _ACCEPTED
        elif category is Category.REJECTED:
            bit = _REJECTED
        else:
            continue  # cross-source pairs are accepted x rejected only
        key = key_digest(prompt)
        state = seen.get(key)
        if state is None:
            seen[key] = (sources.setdefault(source, source), task_id, bit)
            continue
        first_source, first_task, flags = state
        now = flags | bit | (_TWO_SOURCES if source != first_source else 0) | (_TWO_TASKS if task_id != first_task else 0)
        if now != flags:
            seen[key] = (first_source, first_task, now)
    return {key for key, (_, _, flags) in seen.items() if flags == _CAN_PAIR}


def _final(row: Row, fates: Iterable[Fate], payload: _Payload) -> Decided:
    """Written if a new pair used the row, deduped if only earlier pairs did, else why not."""
    fates = list(fates)
    category = row.category.value
    if any(f.in_new for f in fates):
        return (row.index, row.source, category, None, b"", False)
    if any(f.in_existing for f in fates):
        return (row.index, row.source, category, None, b"", True)
    reason, msg = next((f.why for f in fates if f.why is not None),
                       (QuarantineReason.INVALID_PREFERENCE_PAIRING,
                        f"no counterpart with a category gap in task {row.task_id}"))
    return _quarantined_line(row.index, row.source, category, QuarantineReason(reason).value,
                             payload.get(row).quarantine_line(reason, [msg]))


def _by_category(rows: list[Row], category: Category) -> list[Row]:
    """One category's rows by key, then input index. `rows` are in input order, so a stable sort
    by key alone gives that order without a (key, index) tuple per row."""
    return sorted((r for r in rows if r.category is category), key=_KEY)


_KEY = operator.attrgetter("key")


def _pair_task_bucket(rows: Iterable[Row], pairer: _Pairer, refused: RecordFile, decided: RecordFile,
                      cross_out: list[RecordFile] | None, gated: dict[RowKey, tuple[str, list[str]]],
                      appended: AbstractSet[tuple[bytes, bytes]] = frozenset()) -> int:
    """Refuse duplicates and gated rows, pair each (task, question) group, pass cross candidates on.
    The refusals and the other decisions go to two files, each in input order as the bucket's rows
    are (sorted runs for the final merge): nothing of a decided row waits in memory, which a task
    holding most of the rows would otherwise fill with their quarantine lines. `appended`: the
    (task, prompt) digests of groups whose rows here are new rows of a capped group (`settle`)."""
    seen: dict[RowKey, Row] = {}  # the first row of each key
    eligible: list[Row] = []
    for row in rows:
        if (first := seen.get(row.key)) is not None:
            where = _where(pairer.payload.get(first).detail)
            rec = pairer.payload.get(row).quarantine(QuarantineReason.DUPLICATE_ID,
                                                     [f"run {row.key[0]} revision already read at {where}"])
            refused.append(_quarantined(row.index, row.source, row.category.value, rec))
            continue
        seen[row.key] = row
        if row.failure is not None:
            rec = pairer.payload.get(row).quarantine(row.failure[0], row.failure[1])
            refused.append(_quarantined(row.index, row.source, row.category.value, rec))
            if row.failure[0] in REJUDGED_REASONS:
                gated[row.key] = row.failure
            continue
        eligible.append(row)
    del seen  # pairing holds its own state per row: free the duplicate map first

    # A pair compares two answers to the same question: rows are grouped by task and by the
    # instruction they answered (an audit task holds findings about different files and topics;
    # preferring one finding over another would teach severity, not quality).
    made = 0
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in eligible:
        groups.setdefault((row.task_id, row.prompt), []).append(row)
    for task_id, prompt in sorted(groups):
        group = groups[(task_id, prompt)]
        # accepted x rejected first, accepted x partially accepted as the fallback
        if appended and (key_digest(task_id), key_digest(prompt)) in appended:
            pairer.refuse_appended(group, task_id=task_id)
            continue
        made += pairer.offer(_by_category(group, _GRID_CHOSEN), [_by_category(group, c) for c in _GRID_REJECTED],
                             task_id=task_id, pairing="same_task", prompt_of=None, sort_key=(task_id, prompt))

    for row in eligible:
        fate = pairer.fate(row.index)
        if cross_out is not None and row.cross_candidate:
            cross_out[bucket_of(row.prompt, len(cross_out))].append((row.as_tuple(), (fate.in_new, fate.in_existing, fate.why)))
        else:
            decided.append(_final(row, [fate], pairer.payload))
    return made


# a cross-source pair: the two rows come from different sources and different tasks
ACROSS: tuple[Callable[[Row], str], ...] = (lambda row: row.source, lambda row: row.task_id)


def _pair_cross_bucket(parts: list[RecordFile], pairer: _Pairer, unpaired: RecordFile, decided: RecordFile) -> int:
    """Across sources and tasks, still only answers to one and the same instruction, and only
    verdict-bearing reviews (an observer's text judges another run, not the question).

    The bucket is read twice, in input order: first to find the questions that can have a pair at
    all, then to decide every row of the others at once (to `unpaired`: its same-task standing is
    its last word) and hold the rest. A reviewer stream whose rows all answer one template prompt
    puts every review in one such question; holding them cost ~700 B a row. The held rows are
    paired, then decided in input order to `decided`. Both are sorted runs for the final merge."""
    can_pair = _questions_that_can_pair(_cross_stream(parts))
    rows: list[tuple[Row, Fate]] = []
    shared: dict[str, str] = {}  # the held rows' task, prompt and source strings, one copy each
    standings: dict[tuple[Any, ...], Fate] = {}
    for t, fate in _cross_stream(parts):
        if key_digest(t[3]) in can_pair:
            rows.append((_row(t, shared), _standing(fate, standings)))
        else:
            unpaired.append(_final(Row(*t), [Fate(*fate)], pairer.payload))
    made = 0
    by_prompt: dict[str, list[Row]] = {}
    for row, _ in rows:
        by_prompt.setdefault(row.prompt, []).append(row)
    for prompt in sorted(by_prompt):
        group = by_prompt[prompt]
        made += pairer.offer(_by_category(group, Category.ACCEPTED), [_by_category(group, Category.REJECTED)],
                             task_id=cross_task_id(prompt), pairing="cross_source", prompt_of=prompt,
                             sort_key=(prompt,), differ=ACROSS)
    for row, same_task in rows:
        decided.append(_final(row, [same_task, pairer.fate(row.index)], pairer.payload))
    return made


def export_preference(
    read_rows: Callable[[PreferencePass], None],
    firewall: Firewall | PassedGates,
    report: StageReport,
    *,
    record: bool,
    evidence_text: EvidenceText,
    kept: KeptDecisions | None = None,
    reread: Reread | None = None,
    existing_ids: Ids,
    existing_per_task: PairsPerTask,
    max_pairs_per_task: int,
    cross_source: bool,
    spill_dir: Path,
    buckets: int,
    on_sample: LineSink,
    on_quarantine: QuarantineLines,
) -> PreferenceExport:
    """Pairs go to `on_sample` in question order, quarantine rows to `on_quarantine` in input order.
    `read_rows` feeds pass 1 every scored partition in order (`export_partition`: read, or
    replayed from its checkpoint; `record` keeps the entries for the next checkpoints).
    `firewall`: the gates, or the gates behind the inputs known to pass them (PassedGates).
    `kept`: the last run's decisions, with `reread` to read a partition's checkpoint entries again
    (the rows of dirty groups among those replayed); `read_rows` then names each partition
    (`start_partition`) before it goes through."""
    if reread is None:
        kept = None
    result = PreferenceExport(pairs_existing=len(existing_ids))
    decisions = NextDecisions(kept)
    with Spill(spill_dir) as spill, contextlib.ExitStack() as stack:
        payload = _Payload(spill.records("payload"), evidence_text)
        early = spill.records("early", batch=IN_ORDER_BATCH)
        task_buckets = spill.buckets("task", buckets, batch=IN_ORDER_BATCH)
        pass1 = _Pass1(firewall, payload, early, task_buckets, record=record, decisions=decisions,
                       cross_source=cross_source, kept=kept)
        read_rows(pass1)
        pass1.flush()
        pass1.close()
        result.lines_replayed = pass1.replayed
        late = spill.buckets("late", buckets, batch=IN_ORDER_BATCH)
        clean: KeptRows | None = None
        if kept is not None and pass1.deferred:
            assert reread is not None
            clean = pass1.settle(reread, late, capped=lambda digests: existing_per_task.reach(digests, max_pairs_per_task))
        result.rows_kept = pass1.rows_kept

        # cross candidates go to a part per (question bucket, task bucket), each in input order
        cross_parts = ([spill.buckets(f"cross-{c}", buckets, batch=IN_ORDER_BATCH) for c in range(buckets)]
                       if cross_source else None)
        decided_runs: list[RecordFile] = [early]
        same_task_pairs: list[RecordFile] = []
        for b, bucket in enumerate(task_buckets):
            pairer = _Pairer(existing_ids, existing_per_task, max_pairs_per_task, payload,
                             spill.records(f"task-pairs-{b}", batch=IN_ORDER_BATCH))
            refused = spill.records(f"task-refused-{b}", batch=IN_ORDER_BATCH)
            decided_run = spill.records(f"task-decided-{b}", batch=IN_ORDER_BATCH)
            cross_out = [parts[b] for parts in cross_parts] if cross_parts is not None else None
            rows = merge_sorted([bucket, late[b]], key=_INDEX) if late[b].count else bucket
            result.pairs_same_task += _pair_task_bucket(_rows(rows), pairer, refused, decided_run, cross_out,
                                                        result.refused_by_gates, pass1.appended)
            for run in (refused, decided_run):
                run.seal()  # its write buffer goes now, not when the merge reads it
                decided_runs.append(run)
            for part in cross_out or []:
                part.seal()  # one task bucket's parts are open at a time
            same_task_pairs.append(pairer.pairs)

        cross_pairs: list[RecordFile] = []
        for c, parts in enumerate(cross_parts or []):
            pairer = _Pairer(existing_ids, existing_per_task, max_pairs_per_task, payload,
                             spill.records(f"cross-pairs-{c}", batch=IN_ORDER_BATCH))
            unpaired = spill.records(f"cross-unpaired-{c}", batch=IN_ORDER_BATCH)
            decided = spill.records(f"cross-decided-{c}", batch=IN_ORDER_BATCH)
            result.pairs_cross_source += _pair_cross_bucket(parts, pairer, unpaired, decided)
            for run in (unpaired, decided):
                run.seal()
                decided_runs.append(run)
            cross_pairs.append(pairer.pairs)

        for _, line in itertools.chain(merge_sorted(same_task_pairs, key=lambda p: p[0]),
                                       merge_sorted(cross_pairs, key=lambda p: p[0])):
            on_sample(line)
        counts: Counter[TallyKey] = Counter()
        first_seen: dict[TallyKey, int] = {}  # each key's first row: the report keeps keys in that order
        last = -1

        def decide(row: Decided) -> None:
            nonlocal last
            index, source, category, reason, line, deduped = row
            if index <= last:  # a run that was not in input order: the quarantine file would be shuffled
                raise RuntimeError(f"preference decisions out of input order ({index} after {last})")
            last = index
            decisions.decided(row, on_quarantine.at)  # where its line starts, if it has one
            if reason is None:
                key: TallyKey = (source, "deduped" if deduped else "written", None, category)
            else:
                key = (source, "quarantined", reason, category)
                on_quarantine(line, reason)
            counts[key] += 1
            first_seen.setdefault(key, index)

        # the others one at a time; the kept rows' lines go in as blocks between theirs
        others = merge_sorted(decided_runs, key=_INDEX)
        pending = next(others, None)
        copier: KeptLines | None = None
        if clean is not None:
            assert kept is not None
            # the last run's quarantine file: kept rows' lines are copied from it
            copier = KeptLines(kept, clean, stack.enter_context(open(kept.quarantine, "rb", buffering=0)), on_quarantine)
            for block in range(len(copier)):
                first = copier.first_index(block)
                while pending is not None and pending[0] < first:
                    decide(pending)
                    pending = next(others, None)
                if first <= last:
                    raise RuntimeError(f"preference decisions out of input order ({first} after {last})")
                copier.copy(block)
                last = copier.last_index(block)
        while pending is not None:
            decide(pending)
            pending = next(others, None)
        if copier is not None:
            assert kept is not None and clean is not None
            copier.record(decisions)
            for key, (at, n) in kept.counts(clean).items():
                counts[key] += n
                first_seen[key] = min(first_seen.get(key, at), at)
        Tally.of(Counter({key: counts[key] for key in sorted(counts, key=first_seen.__getitem__)})).into(report)
    # the rows a kept run may take again: only when the run saw every row it decided
    result.decisions = decisions if decisions.complete() else None
    return result


_INDEX = operator.itemgetter(0)  # a decided row's, or a spilled row's, input index

